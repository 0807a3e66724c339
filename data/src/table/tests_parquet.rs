//! Tests of the Parquet reader against the files pyarrow, pandas and polars write, in
//! `tests/fixtures/parquet` (see `make.py` there): each reads equal to the same table read from
//! `table.csv`, and what cannot be read is an error naming the column.

use std::path::{Path, PathBuf};

use super::tests::scratch;
use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/parquet")
        .join(name)
}

fn spec(id: Option<&str>, time: Option<&str>, columns: &[&str], missing: Missing) -> TableSpec {
    TableSpec {
        id_column: id.map(Into::into),
        time_column: time.map(Into::into),
        columns: columns.iter().map(|c| (*c).into()).collect(),
        missing,
    }
}

/// The value columns of the fixture table, one of each type.
const VALUES: [&str; 4] = ["temp", "load", "count", "visits"];

fn read(name: &str, spec: &TableSpec) -> Table {
    read_table(&fixture(name), spec, None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Asserts that `t` holds what `expected` holds (the source aside).
fn same(t: &Table, expected: &Table, what: &str) {
    let t = Table {
        source: expected.source.clone(),
        ..t.clone()
    };
    assert_eq!(&t, expected, "{what}");
}

/// Reads `path` expecting an error; returns its message after checking it names the file.
fn fails(path: &Path, spec: &TableSpec, max_bytes: Option<u64>) -> String {
    let msg = read_table(path, spec, max_bytes)
        .expect_err("expected an error")
        .to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    msg
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}: {msg}");
    }
}

/// Every writer and option: codecs, encodings, page versions, row groups, pandas and polars.
const TABLES: [&str; 13] = [
    "pyarrow_snappy.parquet",
    "pyarrow_gzip.parquet",
    "pyarrow_zstd.parquet",
    "pyarrow_lz4.parquet",
    "pyarrow_none.parquet",
    "pyarrow_plain.parquet",
    "pyarrow_v2.parquet",
    "pyarrow_groups.parquet",
    "pyarrow_encodings.parquet",
    "pyarrow_int96.parquet",
    "pandas.parquet",
    "polars.parquet",
    "polars_options.parquet",
];

#[test]
fn every_writer_and_option_reads_as_the_csv() {
    for id in ["id", "store"] {
        // `day`: dates; `ts`: timestamps with a zone (int96 in pyarrow_int96) against the
        // ISO text with its +01:00 offset.
        for time in ["day", "ts"] {
            let s = spec(Some(id), Some(time), &VALUES, Missing::Error);
            let csv = read("table.csv", &s);
            assert_eq!(csv.ids.len(), 3);
            assert_eq!(csv.rows(), 16);
            for name in TABLES {
                same(
                    &read(name, &s),
                    &csv,
                    &format!("{name}, id {id}, time {time}"),
                );
            }
        }
    }
    // The same columns chosen when none are named: the numbers except id and time (the
    // timestamp and the pandas index `__index_level_0__` are not values).
    let s = spec(Some("id"), Some("day"), &[], Missing::Error);
    let csv = read("table.csv", &s);
    assert_eq!(csv.columns, ["store", "temp", "load", "count", "visits"]);
    for name in TABLES {
        same(&read(name, &s), &csv, name);
    }
    // Reordered value columns, no id and no time.
    let s = spec(None, None, &["visits", "temp"], Missing::Error);
    let t = read("pyarrow_groups.parquet", &s);
    assert_eq!(t.ids, ["pyarrow_groups"]);
    assert_eq!(t.time_kind, TimeKind::Index);
    assert_eq!(&t.values[..4], [1000.0, -3.5, 1017.0, -2.75]);
    assert_eq!(t.values[8], 3e9, "an int64 beyond 2^31");
}

#[test]
fn id_types_and_time_units_read_as_the_csv() {
    let csv = |id: &str, time: &str| {
        read(
            "table.csv",
            &spec(Some(id), Some(time), &VALUES, Missing::Error),
        )
    };
    // ids: large_string, dictionary<int8, string>, uint32; times: date32, timestamp[us] without
    // zone (taken as UTC), timestamp[ns, UTC].
    for (id, csv_id) in [("id", "id"), ("id_dict", "id"), ("store", "store")] {
        for (time, csv_time) in [("day", "day"), ("ts_us", "ts"), ("ts_ns", "ts")] {
            let t = read(
                "pyarrow_types.parquet",
                &spec(Some(id), Some(time), &VALUES, Missing::Error),
            );
            same(&t, &csv(csv_id, csv_time), &format!("{id} {time}"));
        }
    }
    let t = read(
        "pyarrow_types.parquet",
        &spec(Some("id"), Some("ts_ns"), &VALUES, Missing::Error),
    );
    assert_eq!(t.time_kind, TimeKind::DateTime);
    assert_eq!(t.ids, ["north", "south", "east"]);
    assert_eq!(
        format_time(t.time_kind, t.times[1]),
        "2024-03-02T05:00:00.125"
    );
}

#[test]
fn nulls_are_nan_under_keep_and_errors_under_error() {
    // Without id and time the rows keep their file order.
    let full = read("table.csv", &spec(None, None, &VALUES, Missing::Error));
    let t = read(
        "pyarrow_nulls.parquet",
        &spec(None, None, &VALUES, Missing::Keep),
    );
    // (row, column) of the nulls, and the NaN, as make.py writes them.
    let gaps = [(1, 1), (2, 0), (5, 1), (9, 0), (9, 2), (15, 3)];
    for (i, (&v, &want)) in t.values.iter().zip(&full.values).enumerate() {
        let at = (i / 4, i % 4);
        if gaps.contains(&at) {
            assert!(v.is_nan(), "{at:?}: {v}");
        } else {
            assert_eq!(v, want, "{at:?}");
        }
    }
    // Grouped by series, the same gaps.
    let s = spec(Some("id"), Some("ts"), &VALUES, Missing::Keep);
    let t = read("pyarrow_nulls.parquet", &s);
    let csv = read(
        "table.csv",
        &spec(Some("id"), Some("ts"), &VALUES, Missing::Error),
    );
    assert_eq!(
        (&t.ids, &t.offsets, &t.times),
        (&csv.ids, &csv.offsets, &csv.times)
    );
    assert_eq!(t.values.iter().filter(|v| v.is_nan()).count(), gaps.len());

    // Under Missing::Error the first gap in row order is reported.
    let p = fixture("pyarrow_nulls.parquet");
    let cases: [(&[&str], &str, &str, &str); 4] = [
        (&VALUES, "data row 2", "\"load\"", "found NaN"),
        (&["temp", "count"], "data row 3", "\"temp\"", "found null"),
        (&["count"], "data row 10", "\"count\"", "found null"),
        (&["visits"], "data row 16", "\"visits\"", "found null"),
    ];
    for (cols, row, col, what) in cases {
        let msg = fails(
            &p,
            &spec(Some("id"), Some("day"), cols, Missing::Error),
            None,
        );
        assert_has(&msg, &[&format!("{row}, column {col}"), what]);
    }
    // A null id or time is an error whatever the policy.
    for missing in [Missing::Keep, Missing::Error] {
        let msg = fails(
            &p,
            &spec(Some("id_gap"), Some("day"), &["store"], missing),
            None,
        );
        assert_has(
            &msg,
            &[
                "data row 5, column \"id_gap\"",
                "expected a series id, found null",
            ],
        );
        let msg = fails(
            &p,
            &spec(Some("id"), Some("day_gap"), &["store"], missing),
            None,
        );
        assert_has(
            &msg,
            &[
                "data row 8, column \"day_gap\"",
                "expected a time, found null",
            ],
        );
    }
}

#[test]
fn columns_that_cannot_be_used_are_named_with_their_type() {
    let p = fixture("nested.parquet");
    let value = |c: &str| {
        fails(
            &p,
            &spec(Some("id"), Some("day"), &[c], Missing::Keep),
            None,
        )
    };
    assert_has(
        &value("tags"),
        &[
            "value column \"tags\" is nested (a list column)",
            "only flat columns",
        ],
    );
    assert_has(
        &value("point"),
        &["value column \"point\" is nested (a struct column)"],
    );
    assert_has(
        &value("point.x"),
        &["value column \"point.x\" is nested (part of column \"point\")"],
    );
    assert_has(
        &value("note"),
        &[
            "value column \"note\" holds string values",
            "expected int32, int64, float or double numbers",
        ],
    );
    assert_has(
        &value("price"),
        &["value column \"price\" holds decimal(9, 2) values"],
    );
    let msg = fails(
        &p,
        &spec(Some("tags"), Some("day"), &[], Missing::Keep),
        None,
    );
    assert_has(&msg, &["id column \"tags\" is nested (a list column)"]);
    let msg = fails(
        &p,
        &spec(Some("id"), Some("point"), &[], Missing::Keep),
        None,
    );
    assert_has(&msg, &["time column \"point\" is nested (a struct column)"]);
    let msg = fails(
        &p,
        &spec(Some("temp"), Some("day"), &[], Missing::Keep),
        None,
    );
    assert_has(
        &msg,
        &[
            "id column \"temp\" holds double values",
            "expected strings or integers",
        ],
    );
    let msg = fails(
        &p,
        &spec(Some("id"), Some("price"), &[], Missing::Keep),
        None,
    );
    assert_has(
        &msg,
        &[
            "time column \"price\" holds decimal(9, 2) values",
            "expected numbers, dates",
        ],
    );
    let msg = fails(
        &p,
        &spec(Some("id"), Some("day"), &["humidity"], Missing::Keep),
        None,
    );
    assert_has(
        &msg,
        &[
            "value column \"humidity\" not found",
            "\"id\", \"day\", \"temp\", \"tags\", \"point\", \"note\", \"price\"",
        ],
    );
    // Chosen automatically, only the flat number column is a value.
    let t = read(
        "nested.parquet",
        &spec(Some("id"), Some("day"), &[], Missing::Keep),
    );
    assert_eq!(t.columns, ["temp"]);
}

#[test]
fn an_unsupported_codec_is_named() {
    let msg = fails(
        &fixture("brotli.parquet"),
        &spec(Some("id"), Some("day"), &VALUES, Missing::Error),
        None,
    );
    assert_has(
        &msg,
        &[
            "column \"id\" is compressed with brotli",
            "supported codecs: uncompressed, snappy, gzip, zstd, lz4, lz4_raw",
        ],
    );
}

#[test]
fn max_bytes_is_checked_from_the_footer_before_any_page() {
    let s = spec(Some("id"), Some("ts"), &VALUES, Missing::Error);
    let p = fixture("pyarrow_none.parquet");
    let msg = fails(&p, &s, Some(1000));
    assert_has(&msg, &["too large", "16 rows", "max_bytes (1000)"]);
    read_table(&p, &s, Some(1 << 20)).unwrap();
    // With every page corrupted, the bound still fails first: no page was read.
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    for b in &mut bytes[4..n - 8 - footer] {
        *b ^= 0x5a;
    }
    let p = scratch("corrupt.parquet", &bytes);
    assert_has(&fails(&p, &s, Some(1000)), &["too large"]);
    assert_has(&fails(&p, &s, None), &["column \"id\"", "cannot decode"]);
}

#[test]
fn truncated_and_corrupted_files_are_errors_not_panics() {
    let s = spec(Some("id"), Some("ts"), &VALUES, Missing::Keep);
    // Two malformations the parquet crate's decoders panic on, one byte changed in the first
    // column chunk of the uncompressed file: its dictionary page's value count (35 for 3),
    // and a data page's encoding tag.
    let none = std::fs::read(fixture("pyarrow_none.parquet")).unwrap();
    for (at, mask, what) in [
        (
            12,
            0x40,
            "the dictionary page states 35 values, more than its 26 bytes hold",
        ),
        (
            1419,
            0xff,
            "a dictionary-encoded data page comes before any dictionary page",
        ),
    ] {
        let mut bytes = none.clone();
        bytes[at] ^= mask;
        let p = scratch("malformed.parquet", &bytes);
        assert_has(
            &fails(&p, &s, None),
            &[
                "column \"id\", data rows 1..16: cannot decode the column chunk",
                what,
            ],
        );
    }
    let p = scratch("text.parquet", b"id,day,temp\nnorth,2024-03-01,1.5\n");
    assert_has(&fails(&p, &s, None), &["not a Parquet file", "PAR1"]);
    // Every truncation is refused; bytes changed anywhere give an error or (in a value of an
    // uncompressed page) a table, never a panic: one byte at a time, then a few at random.
    let mut rng = crate::rng::Rng::new(20, "corrupt parquet");
    for name in [
        "pyarrow_snappy.parquet",
        "pyarrow_none.parquet",
        "pyarrow_v2.parquet",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for len in (0..bytes.len()).step_by(97) {
            let p = scratch("truncated.parquet", &bytes[..len]);
            assert_has(&fails(&p, &s, None), &["not a Parquet file", "PAR1"]);
        }
        let p = scratch(name, &bytes);
        for at in (0..bytes.len()).step_by(13) {
            let mut changed = bytes.clone();
            changed[at] ^= 0xa5;
            std::fs::write(&p, &changed).unwrap();
            let _ = read_table(&p, &s, None);
        }
        for _ in 0..200 {
            let mut changed = bytes.clone();
            for _ in 0..4 {
                let at = rng.next_u64() as usize % bytes.len();
                changed[at] = rng.next_u64() as u8;
            }
            std::fs::write(&p, &changed).unwrap();
            let _ = read_table(&p, &s, None);
        }
    }
}
