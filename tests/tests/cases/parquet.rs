//! Parquet tables through the real program: the files pyarrow, pandas and polars write (the
//! fixtures of `tests/fixtures/parquet`) train the same model as the same table in CSV, and a
//! file the reader refuses fails the run with the reason.

use std::path::Path;

use carry_it::{TempDir, params};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn parquet_from_pyarrow_pandas_and_polars_trains_like_the_csv() {
    let dir = TempDir::new("parquet");
    let fixtures = carry_it::workspace().join("tests/fixtures/parquet");
    let args = |data: &Path, out: &Path| -> Vec<String> {
        [
            "train",
            "--data",
            s(data),
            "--id-column",
            "id",
            "--time-column",
            "ts",
            "--input-columns",
            "temp,load,count",
            "--timesteps",
            "2",
            "--batch-size",
            "3",
            "--steps",
            "6",
            "--hidden",
            "4",
            "--seed",
            "5",
            "--spawn-workers",
            "0",
            "--progress",
            "log",
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let train = |file: &str| {
        let out = dir.join(&file.replace('.', "-"));
        let a = args(&fixtures.join(file), &out);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        carry_it::coordinator_ok(&dir, file, &a);
        params(&out)
    };
    let csv = train("table.csv");
    // Snappy with timestamps in a zone, zstd with data page v2, pandas' categorical ids and
    // nanosecond times, polars' lz4 with several row groups.
    for file in [
        "pyarrow_snappy.parquet",
        "pyarrow_v2.parquet",
        "pandas.parquet",
        "polars_options.parquet",
    ] {
        assert_eq!(train(file), csv, "{file} trains as the CSV does");
    }

    let out = dir.join("brotli");
    let a = args(&fixtures.join("brotli.parquet"), &out);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let log = carry_it::coordinator_fails(&dir, "brotli", &a);
    assert!(
        log.contains("brotli.parquet")
            && log.contains("compressed with brotli")
            && log.contains("supported codecs: uncompressed, snappy, gzip, zstd, lz4, lz4_raw"),
        "{log}"
    );
}
