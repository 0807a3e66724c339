//! Tests of the table readers against the fixtures in `tests/fixtures/series` (written by
//! pandas/pyarrow/numpy, see `make.py` there) and against malformed files written here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::time::{Stamp, parse_stamp};
use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/series")
        .join(name)
}

/// A fresh file `name` holding `bytes`, in a directory of its own (the Parquet tests use it too).
pub(super) fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "carry-table-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn spec(id: Option<&str>, time: Option<&str>, columns: &[&str]) -> TableSpec {
    TableSpec {
        id_column: id.map(Into::into),
        time_column: time.map(Into::into),
        columns: columns.iter().map(|c| (*c).into()).collect(),
        missing: Missing::Error,
    }
}

fn long_spec() -> TableSpec {
    spec(Some("id"), Some("date"), &["temp", "load", "count"])
}

fn day(y: i64, m: u32, d: u32) -> f64 {
    time::days_from_civil(y, m, d) as f64 * 86_400.0
}

/// The fixture table, grouped: a (3 rows), b (3), c (1).
fn expected_long() -> (Vec<f64>, Vec<f32>) {
    let (d1, d2, d3) = (day(2024, 1, 1), day(2024, 1, 2), day(2024, 1, 3));
    let times = vec![d1, d2, d3, d1, d2, d3, d1];
    #[rustfmt::skip]
    let values = vec![
        1.5, 10.25, 3.0,   1.75, 11.0, 5.0,   2.0, 12.0, 7.0,
        -2.0, 20.0, 4.0,   -1.0, 21.5, 6.0,   0.0, 22.0, 8.0,
        0.5, 5.5, 1.0,
    ];
    (times, values)
}

/// Reads `path` expecting an error; returns its message after checking it names the file.
fn fails(path: &Path, spec: &TableSpec, max_bytes: Option<u64>) -> String {
    let err = read_table(path, spec, max_bytes).expect_err("expected an error");
    let msg = err.to_string();
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

fn csv(name: &str, text: &str) -> PathBuf {
    scratch(name, text.as_bytes())
}

const HEADER: &str = "id,date,temp,load,count\n";

// ---------------------------------------------------------------------------------------------
// Every format reads the same table

#[test]
fn every_format_reads_the_same_grouped_table() {
    let (times, values) = expected_long();
    for name in [
        "long.csv",
        "long.csv.gz",
        "long.parquet",
        "long_zstd_v2.parquet",
        "long_gzip_split.parquet",
        "long_plain.parquet",
    ] {
        let path = fixture(name);
        let t = read_table(&path, &long_spec(), None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.source, path.display().to_string());
        assert_eq!(t.ids, ["a", "b", "c"], "{name}");
        assert_eq!(t.offsets, [0, 3, 6, 7], "{name}");
        assert_eq!(t.time_kind, TimeKind::Date, "{name}");
        assert_eq!(t.times, times, "{name}");
        assert_eq!(t.columns, ["temp", "load", "count"], "{name}");
        assert_eq!(t.values, values, "{name}");
        assert_eq!(t.rows(), 7);
        let (ts, vs) = t.series(2);
        assert_eq!((ts, vs), (&times[6..], &values[18..]));
        assert_eq!(format_time(t.time_kind, t.times[1]), "2024-01-02");
    }
}

#[test]
fn ragged_npz_reads_the_same_values() {
    let (_, values) = expected_long();
    let t = read_table(&fixture("ragged.npz"), &TableSpec::default(), None).unwrap();
    assert_eq!(t.ids, ["0", "1", "2"]);
    assert_eq!(t.offsets, [0, 3, 6, 7]);
    assert_eq!(t.time_kind, TimeKind::Index);
    assert_eq!(t.times, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]);
    assert_eq!(t.columns, ["x0", "x1", "x2", "y0"]);
    let x: Vec<f32> = t.values.chunks(4).flat_map(|r| r[..3].to_vec()).collect();
    assert_eq!(x, values);
    let y: Vec<f32> = t.values.chunks(4).map(|r| r[3]).collect();
    assert_eq!(y, [3.0, 5.0, 7.0, 4.0, 6.0, 8.0, 1.0]);

    // Chosen and reordered columns.
    let t = read_table(
        &fixture("ragged.npz"),
        &spec(None, None, &["y0", "x1"]),
        None,
    )
    .unwrap();
    assert_eq!(t.columns, ["y0", "x1"]);
    assert_eq!(&t.values[..4], [3.0, 10.25, 5.0, 11.0]);
}

#[test]
fn empty_columns_mean_every_numeric_column() {
    let auto = spec(Some("id"), Some("date"), &[]);
    for name in ["long.csv", "long.parquet"] {
        let t = read_table(&fixture(name), &auto, None).unwrap();
        assert_eq!(t.columns, ["temp", "load", "count"], "{name}");
    }
    // A text column and a pandas index (empty header name) are skipped in a CSV.
    let p = csv("auto.csv", ",k,t,label,v\n0,a,1,x,2.5\n1,a,2,y,nan\n");
    let t = read_table(&p, &spec(Some("k"), Some("t"), &[]), None);
    let msg = t.unwrap_err().to_string();
    assert_has(
        &msg,
        &[
            "data row 2 (line 3)",
            "column \"v\"",
            "missing value",
            "\"nan\"",
        ],
    );
    let p = csv("auto2.csv", ",k,t,label,v\n0,a,1,x,2.5\n1,a,2,y,3\n");
    let t = read_table(&p, &spec(Some("k"), Some("t"), &[]), None).unwrap();
    assert_eq!(t.columns, ["v"]);
    assert_eq!(t.time_kind, TimeKind::Number);
    // Parquet: strings, the pandas index and the nested list column are skipped.
    let t = read_table(
        &fixture("stamps.parquet"),
        &spec(Some("sensor"), Some("ts"), &[]),
        None,
    )
    .unwrap();
    assert_eq!(t.columns, ["v"]);
}

#[test]
fn interleaved_rows_are_grouped_in_first_appearance_order() {
    let p = csv(
        "inter.csv",
        "s,t,v\nz,5,1\ny,1,2\nz,6,3\nx,0,4\ny,2,5\nz,7.5,6\n",
    );
    let t = read_table(&p, &spec(Some("s"), Some("t"), &["v"]), None).unwrap();
    assert_eq!(t.ids, ["z", "y", "x"]);
    assert_eq!(t.offsets, [0, 3, 5, 6]);
    assert_eq!(t.times, [5.0, 6.0, 7.5, 1.0, 2.0, 0.0]);
    assert_eq!(t.values, [1.0, 3.0, 6.0, 2.0, 5.0, 4.0]);
    assert_eq!(t.time_kind, TimeKind::Number);
}

#[test]
fn without_id_or_time_the_file_is_one_indexed_series() {
    let t = read_table(&fixture("long.csv.gz"), &spec(None, None, &["load"]), None).unwrap();
    assert_eq!(t.ids, ["long"]);
    assert_eq!(t.offsets, [0, 7]);
    assert_eq!(t.time_kind, TimeKind::Index);
    assert_eq!(t.times, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(t.values, [10.25, 20.0, 11.0, 5.5, 21.5, 12.0, 22.0]);
    let t = read_table(
        &fixture("long_plain.parquet"),
        &spec(None, None, &["count"]),
        None,
    )
    .unwrap();
    assert_eq!(t.ids, ["long_plain"]);
    assert_eq!(t.values, [3.0, 4.0, 5.0, 1.0, 6.0, 7.0, 8.0]);
    // Index times within each series when there is an id but no time column.
    let t = read_table(
        &fixture("long.parquet"),
        &spec(Some("id"), None, &["count"]),
        None,
    )
    .unwrap();
    assert_eq!(t.times, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]);
}

#[test]
fn parquet_timestamps_integer_ids_and_int96() {
    let t = read_table(
        &fixture("stamps.parquet"),
        &spec(Some("sensor"), Some("ts"), &["v"]),
        None,
    )
    .unwrap();
    assert_eq!(t.ids, ["7", "9"]);
    assert_eq!(t.time_kind, TimeKind::DateTime);
    let base = day(2024, 3, 1);
    assert_eq!(
        t.times,
        [
            base,
            base + 30.5,
            base + 8.0 * 3600.0,
            base + 9.0 * 3600.0 + 1.0
        ]
    );
    assert_eq!(t.values, [1.0, 3.0, 2.0, 4.0]);
    assert_eq!(
        format_time(t.time_kind, t.times[1]),
        "2024-03-01T00:00:30.5"
    );
    assert_eq!(format_time(t.time_kind, t.times[2]), "2024-03-01T08:00:00");

    let i96 = read_table(
        &fixture("int96.parquet"),
        &spec(None, Some("ts"), &["v"]),
        None,
    )
    .unwrap();
    let text = read_table(
        &fixture("int96.parquet"),
        &spec(None, Some("when"), &["v"]),
        None,
    )
    .unwrap();
    assert_eq!(i96.time_kind, TimeKind::DateTime);
    assert_eq!(text.time_kind, TimeKind::DateTime);
    assert_eq!(i96.times, [base, day(2024, 3, 2) + 12.5 * 3600.0]);
    assert_eq!(i96.times, text.times);
}

// ---------------------------------------------------------------------------------------------
// Times

#[test]
fn stamps_parse_with_offsets_fractions_and_separators() {
    let base = day(2024, 2, 29);
    let dt = |s| match parse_stamp(s) {
        Some(Stamp::DateTime(v)) => v,
        other => panic!("{s}: {other:?}"),
    };
    assert_eq!(parse_stamp("2024-02-29"), Some(Stamp::Date(base)));
    assert_eq!(dt("2024-02-29T01:02:03"), base + 3723.0);
    assert_eq!(dt("2024-02-29 01:02:03Z"), base + 3723.0);
    assert_eq!(dt("2024-02-29T01:02"), base + 3720.0);
    assert_eq!(dt("2024-02-29T01:02:03.25"), base + 3723.25);
    assert_eq!(dt("2024-02-29T03:02:03+02:00"), base + 3723.0);
    assert_eq!(dt("2024-02-28T23:02:03-0200"), base + 3723.0);
    assert_eq!(dt("2024-02-29T06:32:03+05:30"), base + 3723.0);
    assert_eq!(dt("1969-12-31T23:59:59Z"), -1.0);
    for bad in [
        "2023-02-29",
        "2024-13-01",
        "2024-00-10",
        "2024-1-01",
        "24-01-01",
        "2024-01-01T24:00:00",
        "2024-01-01T10:60",
        "2024-01-01T10:00:00+25:00",
        "2024-01-01T10:00:00.",
        "2024/01/01",
        "2024-01-01x",
        "2024-01-01T10:00:00 UTC",
        "",
    ] {
        assert_eq!(parse_stamp(bad), None, "{bad}");
    }
}

#[test]
fn format_time_inverts_parsing() {
    assert_eq!(format_time(TimeKind::Number, 3.0), "3");
    assert_eq!(format_time(TimeKind::Number, -0.0), "0");
    assert_eq!(format_time(TimeKind::Number, 0.1), "0.1");
    assert_eq!(format_time(TimeKind::Number, 1e-7), "0.0000001");
    assert_eq!(format_time(TimeKind::Index, 12.0), "12");
    assert_eq!(format_time(TimeKind::Date, day(1999, 12, 31)), "1999-12-31");
    assert_eq!(format_time(TimeKind::Date, day(1900, 3, 1)), "1900-03-01");
    assert_eq!(format_time(TimeKind::DateTime, -1.0), "1969-12-31T23:59:59");
    for s in [
        "2024-02-29T01:02:03",
        "2000-01-01T00:00:00",
        "2024-03-01T00:00:30.5",
    ] {
        let Some(Stamp::DateTime(v)) = parse_stamp(s) else {
            panic!("{s}")
        };
        assert_eq!(format_time(TimeKind::DateTime, v), s);
    }
    for d in [-1_000_000i64, -1, 0, 1, 59, 60, 365, 10_957, 2_932_896] {
        let (y, m, dd) = time::civil_from_days(d);
        assert_eq!(time::days_from_civil(y, m, dd), d);
    }
    for v in [0.1, 1.0 / 3.0, 1e300, -2.5e-8, 123456789.0] {
        let s = format_time(TimeKind::Number, v);
        assert_eq!(s.parse::<f64>().unwrap(), v, "{s}");
    }
}

#[test]
fn csv_time_columns_of_each_kind() {
    let p = csv(
        "dt.csv",
        "t,v\n2024-01-01,1\n2024-01-01T06:00:00Z,2\n2024-01-02 00:00:00+01:00,3\n",
    );
    let t = read_table(&p, &spec(None, Some("t"), &["v"]), None).unwrap();
    // A date column turns into a date-time column at its first time of day.
    assert_eq!(t.time_kind, TimeKind::DateTime);
    let d = day(2024, 1, 1);
    assert_eq!(t.times, [d, d + 6.0 * 3600.0, d + 23.0 * 3600.0]);
    let p = csv("num.csv", "t,v\n-1.5,1\n2,2\n1e3,3\n");
    let t = read_table(&p, &spec(None, Some("t"), &["v"]), None).unwrap();
    assert_eq!(t.times, [-1.5, 2.0, 1000.0]);
    // Quoting, surrounding spaces, CRLF line ends and blank lines are handled.
    let p = csv(
        "q.csv",
        "\"id\", t ,v\r\n\"a,1\", 1 , 2.5 \r\n\r\n\"a,1\",2,3\r\n",
    );
    let t = read_table(&p, &spec(Some("id"), Some("t"), &["v"]), None).unwrap();
    assert_eq!(t.ids, ["a,1"]);
    assert_eq!(t.values, [2.5, 3.0]);
    // A UTF-8 byte order mark before the header is dropped.
    let p = csv("bom.csv", "\u{feff}t,v\n1,2\n");
    let t = read_table(&p, &spec(None, Some("t"), &["v"]), None).unwrap();
    assert_eq!(
        (t.times.as_slice(), t.values.as_slice()),
        (&[1.0][..], &[2.0f32][..])
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed input

#[test]
fn missing_columns_list_the_available_ones() {
    for name in ["long.csv", "long.parquet"] {
        let p = fixture(name);
        let msg = fails(
            &p,
            &spec(Some("id"), Some("date"), &["temp", "humidity"]),
            None,
        );
        assert_has(
            &msg,
            &[
                "\"humidity\" not found",
                "\"id\", \"date\", \"temp\", \"load\", \"count\"",
            ],
        );
        let msg = fails(&p, &spec(Some("key"), Some("date"), &[]), None);
        assert_has(&msg, &["id column \"key\" not found", "\"count\""]);
        let msg = fails(&p, &spec(Some("id"), Some("when"), &[]), None);
        assert_has(&msg, &["time column \"when\" not found"]);
    }
    let msg = fails(&fixture("ragged.npz"), &spec(None, None, &["x7"]), None);
    assert_has(&msg, &["\"x7\" not found", "x0..x2, y0..y0"]);
    let msg = fails(
        &fixture("long.csv"),
        &spec(Some("id"), None, &["temp", "temp"]),
        None,
    );
    assert_has(&msg, &["\"temp\" is requested twice"]);
}

#[test]
fn bad_value_cells_name_row_column_and_cell() {
    let cases = [
        (
            "a,2024-01-01,abc,1,2\n",
            "temp",
            "expected a number, found \"abc\"",
        ),
        ("a,2024-01-01,1,,2\n", "load", "empty cell (a missing value"),
        (
            "a,2024-01-01,1,2,nan\n",
            "count",
            "\"nan\", a missing value",
        ),
        ("a,2024-01-01,NaN,2,3\n", "temp", "\"NaN\", a missing value"),
        ("a,2024-01-01,NA,2,3\n", "temp", "\"NA\", a missing value"),
        (
            "a,2024-01-01,1,-inf,3\n",
            "load",
            "infinite value (\"-inf\")",
        ),
        ("a,2024-01-01,1,2,1e39\n", "count", "float32 range"),
    ];
    for (i, (row, col, what)) in cases.iter().enumerate() {
        let text = format!("{HEADER}a,2023-12-31,0,0,0\n{row}");
        for (name, bytes) in [
            (format!("bad{i}.csv"), text.as_bytes().to_vec()),
            (format!("bad{i}.csv.gz"), gzip(text.as_bytes())),
        ] {
            let p = scratch(&name, &bytes);
            let msg = fails(&p, &long_spec(), None);
            assert_has(
                &msg,
                &["data row 2 (line 3)", &format!("column \"{col}\""), what],
            );
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn bad_time_cells_are_errors() {
    let cases = [
        (
            "a,2024-13-01,1,2,3\n",
            "expected a date YYYY-MM-DD",
            "\"2024-13-01\"",
        ),
        (
            "a,,1,2,3\n",
            "expected a time, found an empty cell",
            "column \"date\"",
        ),
        ("a,17,1,2,3\n", "expected a date YYYY-MM-DD", "\"17\""),
    ];
    for (i, (row, what, cell)) in cases.iter().enumerate() {
        let p = csv(
            &format!("t{i}.csv"),
            &format!("{HEADER}a,2023-12-31,0,0,0\n{row}"),
        );
        let msg = fails(&p, &long_spec(), None);
        assert_has(
            &msg,
            &["data row 2 (line 3)", "column \"date\"", what, cell],
        );
    }
    let p = csv("tn.csv", "id,t,v\na,1,1\na,x1,2\n");
    let msg = fails(&p, &spec(Some("id"), Some("t"), &["v"]), None);
    assert_has(
        &msg,
        &[
            "data row 2 (line 3)",
            "column \"t\"",
            "expected a number",
            "\"x1\"",
        ],
    );
    let p = csv("tnan.csv", "id,t,v\na,nan,1\n");
    let msg = fails(&p, &spec(Some("id"), Some("t"), &["v"]), None);
    assert_has(
        &msg,
        &[
            "data row 1 (line 2)",
            "column \"t\"",
            "finite time",
            "\"nan\"",
        ],
    );
    let p = csv("tid.csv", "id,t,v\n,1,1\n");
    let msg = fails(&p, &spec(Some("id"), Some("t"), &["v"]), None);
    assert_has(
        &msg,
        &[
            "data row 1 (line 2)",
            "column \"id\"",
            "expected a series id, found an empty cell",
        ],
    );
}

#[test]
fn unsorted_and_duplicate_times_name_series_and_both_times() {
    let p = csv(
        "unsorted.csv",
        &format!("{HEADER}a,2024-01-01,0,0,0\nb,2024-01-09,0,0,0\nb,2024-01-05,0,0,0\n"),
    );
    let msg = fails(&p, &long_spec(), None);
    assert_has(
        &msg,
        &[
            "column \"date\"",
            "series \"b\"",
            "2024-01-05 at data row 3 (line 4)",
            "2024-01-09 at data row 2 (line 3)",
            "unsorted",
        ],
    );
    let p = csv(
        "dup.csv",
        &format!("{HEADER}a,2024-01-01,0,0,0\nb,2024-01-02,0,0,0\na,2024-01-01,0,0,0\n"),
    );
    let msg = fails(&p, &long_spec(), None);
    assert_has(
        &msg,
        &[
            "series \"a\"",
            "duplicate time 2024-01-01",
            "data row 1 (line 2)",
            "data row 3 (line 4)",
        ],
    );
    // Parquet rows are named by data row.
    let msg = fails(
        &fixture("long.parquet"),
        &spec(None, Some("date"), &["temp"]),
        None,
    );
    assert_has(
        &msg,
        &[
            "column \"date\"",
            "series \"long\"",
            "duplicate time 2024-01-01 at data row 1 and data row 2",
        ],
    );
}

#[test]
fn structural_csv_errors() {
    let p = csv("empty.csv", "");
    assert_has(&fails(&p, &long_spec(), None), &["empty file"]);
    let p = csv("header.csv", HEADER);
    assert_has(&fails(&p, &long_spec(), None), &["no data rows"]);
    let p = csv(
        "ragged.csv",
        &format!("{HEADER}a,2024-01-01,0,0,0\na,2024-01-02,0,0\n"),
    );
    assert_has(
        &fails(&p, &long_spec(), None),
        &[
            "data row 2 (line 3)",
            "expected 5 fields as in the header, found 4",
        ],
    );
    let p = csv("dupcol.csv", "id,t,v,v\na,1,2,3\n");
    assert_has(
        &fails(&p, &spec(Some("id"), Some("t"), &["v"]), None),
        &["\"v\" appears more than once (fields 3 and 4)"],
    );
    let p = scratch("latin1.csv", b"id,t,v\n\xe9,1,2\n");
    assert_has(
        &fails(&p, &spec(Some("id"), Some("t"), &["v"]), None),
        &["line 2", "UTF-8"],
    );
    let p = scratch("table.tsv", b"id\n");
    assert_has(&fails(&p, &long_spec(), None), &["unknown table format"]);
    let p = scratch("broken.csv.gz", b"\x1f\x8b\x08\x00garbage");
    assert_has(
        &fails(&p, &long_spec(), None),
        &["cannot read the gzipped CSV data"],
    );
}

#[test]
fn max_bytes_limits_every_format() {
    let msg = fails(&fixture("long.csv"), &long_spec(), Some(100));
    assert_has(&msg, &["too large", "195 bytes", "max_bytes (100)"]);
    let msg = fails(&fixture("long.csv.gz"), &long_spec(), Some(100));
    assert_has(&msg, &["too large", "decompressed", "max_bytes (100)"]);
    let msg = fails(&fixture("long.parquet"), &long_spec(), Some(100));
    assert_has(&msg, &["too large", "max_bytes (100)"]);
    let msg = fails(&fixture("ragged.npz"), &TableSpec::default(), Some(100));
    assert_has(&msg, &["too large", "max_bytes (100)"]);
    // Generous limits pass.
    for name in ["long.csv", "long.csv.gz", "long.parquet"] {
        read_table(&fixture(name), &long_spec(), Some(1 << 20)).unwrap();
    }
}

#[test]
fn parquet_errors() {
    let msg = fails(&fixture("nulls.parquet"), &long_spec(), None);
    assert_has(&msg, &["data row 5", "column \"load\"", "found null"]);
    let msg = fails(
        &fixture("stamps.parquet"),
        &spec(Some("sensor"), Some("ts"), &["note"]),
        None,
    );
    assert_has(
        &msg,
        &[
            "value column \"note\" holds string values",
            "expected int32, int64, float or double",
        ],
    );
    let msg = fails(
        &fixture("stamps.parquet"),
        &spec(Some("sensor"), Some("ts"), &["tags.list.element"]),
        None,
    );
    assert_has(
        &msg,
        &["\"tags.list.element\" is nested", "only flat columns"],
    );
    let msg = fails(
        &fixture("stamps.parquet"),
        &spec(Some("v"), Some("ts"), &[]),
        None,
    );
    assert_has(
        &msg,
        &[
            "id column \"v\" holds float values",
            "expected strings or integers",
        ],
    );
    let msg = fails(
        &fixture("stamps.parquet"),
        &spec(Some("sensor"), Some("note"), &[]),
        None,
    );
    assert_has(&msg, &["data row 1", "column \"note\"", "\"x\""]);
    let p = scratch(
        "trunc.parquet",
        &std::fs::read(fixture("long.parquet")).unwrap()[..1000],
    );
    assert_has(&fails(&p, &long_spec(), None), &["not a Parquet file"]);
    let p = scratch("text.parquet", b"id,t\n1,2\n3,4\n");
    assert_has(
        &fails(&p, &long_spec(), None),
        &["not a Parquet file", "PAR1"],
    );
    // A corrupted page: flip bytes inside the first column chunk's data.
    let mut bytes = std::fs::read(fixture("long_plain.parquet")).unwrap();
    for b in &mut bytes[4..40] {
        *b ^= 0x5a;
    }
    let p = scratch("corrupt.parquet", &bytes);
    let msg = fails(&p, &long_spec(), None);
    assert_has(&msg, &["column \"id\""]);
}

#[test]
fn npz_errors() {
    let msg = fails(&fixture("ragged_neg.npz"), &TableSpec::default(), None);
    assert_has(
        &msg,
        &["array \"lengths\", entry 1", "at least 1, found -1"],
    );
    let msg = fails(&fixture("ragged_f.npz"), &TableSpec::default(), None);
    assert_has(
        &msg,
        &["array \"lengths\", entry 0", "whole number", "found 2.5"],
    );
    let msg = fails(&fixture("ragged.npz"), &spec(Some("id"), None, &[]), None);
    assert_has(&msg, &["no id or time column"]);

    let write = |name: &str, x: &[f32], lengths: &[f32]| {
        let p = scratch(name, b"");
        crate::npy::write_npz(
            &p,
            &[
                ("x", &[x.len() / 2, 2], x),
                ("lengths", &[lengths.len()], lengths),
            ],
        )
        .unwrap();
        p
    };
    let p = write("zero.npz", &[0.0; 6], &[3.0, 0.0]);
    assert_has(
        &fails(&p, &TableSpec::default(), None),
        &["entry 1", "found 0"],
    );
    let p = write("sum.npz", &[0.0; 6], &[1.0, 1.0]);
    assert_has(
        &fails(&p, &TableSpec::default(), None),
        &["sum to 2, expected the 3 rows"],
    );
    let p = write("nan.npz", &[0.0, 1.0, 2.0, f32::NAN, 4.0, 5.0], &[3.0]);
    assert_has(
        &fails(&p, &TableSpec::default(), None),
        &["data row 2", "column \"x1\"", "found NaN, a missing value"],
    );
    let p = write("inf.npz", &[0.0, 1.0, 2.0, 3.0, f32::INFINITY, 5.0], &[3.0]);
    assert_has(
        &fails(&p, &TableSpec::default(), None),
        &["data row 3", "column \"x0\"", "found inf"],
    );
    let p = scratch("nolen.npz", b"");
    crate::npy::write_npz(&p, &[("x", &[2, 1], &[1.0, 2.0])]).unwrap();
    assert_has(
        &fails(&p, &TableSpec::default(), None),
        &["no array \"lengths\""],
    );
    let p = scratch("extra.npz", b"");
    crate::npy::write_npz(
        &p,
        &[
            ("x", &[1, 1], &[1.0]),
            ("lengths", &[1], &[1.0]),
            ("z", &[1], &[1.0]),
        ],
    )
    .unwrap();
    assert_has(
        &fails(&p, &TableSpec::default(), None),
        &["unexpected entry \"z.npy\""],
    );
}

#[test]
fn kept_missing_values_become_nan_in_csv_and_npz() {
    let keep = |s: TableSpec| TableSpec {
        missing: Missing::Keep,
        ..s
    };
    // empty cells, pandas' markers and any spelling of NaN are missing; the rest reads as usual
    let text = format!(
        "{HEADER}a,2024-01-01,1,,NA\na,2024-01-02,NaN,2,3\nb,2024-01-01,n/a,null,nan\nb,2024-01-02,4, 5 ,<NA>\n"
    );
    for (name, bytes) in [
        ("keep.csv", text.as_bytes().to_vec()),
        ("keep.csv.gz", gzip(text.as_bytes())),
    ] {
        let t = read_table(&scratch(name, &bytes), &keep(long_spec()), None).unwrap();
        let shown: Vec<String> = t.values.iter().map(|v| format!("{v}")).collect();
        assert_eq!(
            shown,
            [
                "1", "NaN", "NaN", "NaN", "2", "3", "NaN", "NaN", "NaN", "4", "5", "NaN"
            ],
            "{name}"
        );
    }
    // a column whose first cell is missing still counts as a value column
    let p = csv("keep-auto.csv", "id,t,v,w\na,1,NA,x\na,2,2,y\n");
    let t = read_table(&p, &keep(spec(Some("id"), Some("t"), &[])), None).unwrap();
    assert_eq!(t.columns, ["v"]);
    assert!(t.values[0].is_nan() && t.values[1] == 2.0);
    // an infinity, a word, an empty id or time are still errors
    for (i, (row, what)) in [
        ("a,2024-01-03,1,inf,2\n", "infinite value"),
        ("a,2024-01-03,1,abc,2\n", "expected a number, found \"abc\""),
        (",2024-01-03,1,2,3\n", "expected a series id"),
        ("a,,1,2,3\n", "expected a time"),
    ]
    .iter()
    .enumerate()
    {
        let p = csv(&format!("keep-bad{i}.csv"), &format!("{HEADER}{row}"));
        assert_has(&fails(&p, &keep(long_spec()), None), &[what]);
    }
    // npz: NaN is missing, an infinity an error
    let p = scratch("keep.npz", b"");
    crate::npy::write_npz(
        &p,
        &[
            ("x", &[3, 1], &[1.0, f32::NAN, 3.0]),
            ("lengths", &[1], &[3.0]),
        ],
    )
    .unwrap();
    let t = read_table(&p, &keep(TableSpec::default()), None).unwrap();
    assert!(t.values[1].is_nan() && t.values[2] == 3.0);
    crate::npy::write_npz(
        &p,
        &[
            ("x", &[3, 1], &[1.0, f32::INFINITY, 3.0]),
            ("lengths", &[1], &[3.0]),
        ],
    )
    .unwrap();
    assert_has(
        &fails(&p, &keep(TableSpec::default()), None),
        &["data row 2", "found inf"],
    );
}
