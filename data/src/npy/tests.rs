//! Tests of `.npy` / `.npz` reading and writing, including files written by NumPy itself.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

use super::*;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "npy-test-{tag}-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds a `.npy` file with the given version, header text and data.
fn raw_npy(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(major);
    out.push(0);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn le_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn be_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn le_f64(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn be_f64(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn err(bytes: &[u8], what: &str) -> String {
    match parse_npy(bytes, what) {
        Ok(a) => panic!("expected an error, got {a:?}"),
        Err(e) => e.to_string(),
    }
}

fn arange(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

// ----- writing -----------------------------------------------------------

#[test]
fn npy_bytes_header_layout() {
    let bytes = npy_bytes(&[10, 96, 2], &vec![0.0; 1920]);
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let data_start = 10 + header_len;
    assert_eq!(data_start % 64, 0);
    assert_eq!(bytes.len(), data_start + 1920 * 4);
    let header = std::str::from_utf8(&bytes[10..data_start]).expect("ascii header");
    assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (10, 96, 2), }"));
    assert!(header.ends_with('\n'));
    assert!(header[..header.len() - 1].trim_end().ends_with('}'));
}

#[test]
fn npy_bytes_shape_repr() {
    let header = |shape: &[usize], n: usize| {
        let b = npy_bytes(shape, &vec![1.0; n]);
        String::from_utf8_lossy(&b[10..]).into_owned()
    };
    assert!(header(&[], 1).contains("'shape': (), }"));
    assert!(header(&[5], 5).contains("'shape': (5,), }"));
    assert!(header(&[2, 3], 6).contains("'shape': (2, 3), }"));
    assert!(header(&[0, 96, 2], 0).contains("'shape': (0, 96, 2), }"));
}

#[test]
fn npy_bytes_falls_back_to_version_2_for_huge_headers() {
    let shape = vec![1usize; 30_000];
    let bytes = npy_bytes(&shape, &[7.0]);
    assert_eq!(&bytes[6..8], &[2, 0]);
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    assert_eq!((12 + len) % 64, 0);
    let a = parse_npy(&bytes, "deep").expect("parse");
    assert_eq!(a.shape, shape);
    assert_eq!(a.data, vec![7.0]);
}

#[test]
#[should_panic(expected = "does not match")]
fn npy_bytes_panics_on_shape_mismatch() {
    let _ = npy_bytes(&[2, 3], &[1.0; 5]);
}

#[test]
fn round_trip_in_memory() {
    let cases: Vec<Vec<usize>> = vec![
        vec![],
        vec![0],
        vec![5],
        vec![2, 3],
        vec![10, 96, 2],
        vec![0, 96, 2],
        vec![3, 0],
        vec![2, 1, 3, 1, 2],
    ];
    for shape in cases {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 5.0).collect();
        let a = parse_npy(&npy_bytes(&shape, &data), "x").expect("parse");
        assert_eq!(a.shape, shape);
        assert_eq!(a.data, data);
        assert_eq!(a.dtype, Dtype::F32);
    }
}

#[test]
fn round_trip_preserves_special_values() {
    let data = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MIN_POSITIVE,
        f32::MAX,
        1e-45,
    ];
    let a = parse_npy(&npy_bytes(&[7], &data), "x").expect("parse");
    for (got, want) in a.data.iter().zip(&data) {
        assert_eq!(got.to_bits(), want.to_bits());
    }
}

#[test]
fn round_trip_files() {
    let dir = TempDir::new("npy");
    for shape in [vec![], vec![4], vec![2, 3, 4], vec![0, 96, 2]] {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 - 1.5).collect();
        let path = dir.path("out.npy");
        write_npy(&path, &shape, &data).expect("write");
        let a = read_npy(&path).expect("read");
        assert_eq!(a.shape, shape);
        assert_eq!(a.data, data);
    }
    // Only the final file remains: no temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.npy")]);
}

#[test]
fn write_npy_overwrites_existing_file() {
    let dir = TempDir::new("overwrite");
    let path = dir.path("p.npy");
    write_npy(&path, &[3], &[1.0, 2.0, 3.0]).expect("write");
    write_npy(&path, &[1], &[9.0]).expect("rewrite");
    let a = read_npy(&path).expect("read");
    assert_eq!((a.shape, a.data), (vec![1], vec![9.0]));
}

#[test]
fn write_npy_rejects_shape_mismatch() {
    let dir = TempDir::new("mismatch");
    let path = dir.path("p.npy");
    let e = write_npy(&path, &[2, 3], &[1.0; 5]).expect_err("mismatch");
    let msg = e.to_string();
    assert!(msg.contains("shape (2, 3) needs 6 values, got 5"), "{msg}");
    assert!(msg.contains("p.npy"), "{msg}");
    assert!(!path.exists());

    let e = write_npy(&path, &[usize::MAX, 2], &[]).expect_err("overflow");
    assert!(
        e.to_string().contains("needs more than usize::MAX values"),
        "{e}"
    );
}

#[test]
fn write_reports_io_errors_with_path() {
    let dir = TempDir::new("ioerr");
    let path = dir.path("missing-dir").join("p.npy");
    let e = write_npy(&path, &[1], &[1.0]).expect_err("no such dir");
    let msg = e.to_string();
    assert!(msg.starts_with("cannot create temporary file"), "{msg}");
    assert!(msg.contains("missing-dir"), "{msg}");
    assert!(matches!(e, NpyError::Io { .. }));

    let e =
        write_npz(&path.with_extension("npz"), &[("x", &[1], &[1.0])]).expect_err("no such dir");
    assert!(e.to_string().contains("missing-dir"), "{e}");
}

#[test]
fn npz_round_trip() {
    let dir = TempDir::new("npz");
    let path = dir.path("pred.npz");
    let x: Vec<f32> = (0..1920).map(|i| (i as f32).sin()).collect();
    let y = vec![0.5f32, -0.25, 8.0];
    let s = [42.0f32];
    write_npz(
        &path,
        &[
            ("x", &[10, 96, 2], &x),
            ("y", &[3], &y),
            ("scalar", &[], &s),
            ("empty", &[0, 4], &[]),
        ],
    )
    .expect("write");
    let arrays = read_npz(&path).expect("read");
    let keys: Vec<&str> = arrays.keys().map(String::as_str).collect();
    assert_eq!(keys, ["empty", "scalar", "x", "y"]);
    assert_eq!(arrays["x"].shape, [10, 96, 2]);
    assert_eq!(arrays["x"].data, x);
    assert_eq!(arrays["y"].data, y);
    assert_eq!(arrays["scalar"].shape, Vec::<usize>::new());
    assert_eq!(arrays["scalar"].data, s);
    assert_eq!(arrays["empty"].shape, [0, 4]);
    assert!(arrays["empty"].data.is_empty());

    // Entries are deflated and named "<name>.npy".
    let file = File::open(&path).expect("open");
    let mut archive = zip::ZipArchive::new(file).expect("zip");
    for i in 0..archive.len() {
        let entry = archive.by_index(i).expect("entry");
        assert!(entry.name().ends_with(".npy"));
        assert_eq!(entry.compression(), CompressionMethod::Deflated);
    }
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("pred.npz")]);
}

#[test]
fn write_npz_rejects_bad_names_and_shapes() {
    let dir = TempDir::new("npzbad");
    let path = dir.path("bad.npz");
    let one = [1.0f32];
    for (name, reason) in [
        ("", "empty"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
    ] {
        let e = write_npz(&path, &[(name, &[1], &one)]).expect_err("bad name");
        let msg = e.to_string();
        assert!(msg.contains(reason), "{msg}");
        assert!(msg.contains("bad.npz"), "{msg}");
    }
    let e = write_npz(&path, &[("x", &[1], &one), ("x", &[1], &one)]).expect_err("dup");
    assert!(
        e.to_string()
            .contains("invalid array name \"x\" (used twice)"),
        "{e}"
    );
    let e = write_npz(&path, &[("x", &[2, 2], &one)]).expect_err("shape");
    assert!(
        e.to_string()
            .contains("bad.npz:x\": shape (2, 2) needs 4 values, got 1"),
        "{e}"
    );
    assert!(!path.exists());
}

// ----- reading variants --------------------------------------------------

#[test]
fn reads_f64_and_converts() {
    let values = [0.1f64, -2.5, 1e-300, f64::NAN, f64::INFINITY, 3.0e38];
    let bytes = raw_npy(
        1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n",
        &le_f64(&values),
    );
    let a = parse_npy(&bytes, "y").expect("parse");
    assert_eq!(a.dtype, Dtype::F64);
    assert_eq!(a.shape, [2, 3]);
    assert_eq!(a.data[0], 0.1f32);
    assert_eq!(a.data[1], -2.5);
    assert_eq!(a.data[2], 0.0);
    assert!(a.data[3].is_nan());
    assert_eq!(a.data[4], f32::INFINITY);
    assert_eq!(a.data[5], 3.0e38);
}

#[test]
fn f64_overflow_names_array_and_index() {
    let mut values = vec![1.0f64; 24];
    values[17] = 1e300;
    let bytes = raw_npy(
        1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (24,), }\n",
        &le_f64(&values),
    );
    assert_eq!(
        err(&bytes, "x"),
        "array \"x\": value 1e300 at index 17 does not fit in float32"
    );
    values[17] = -3.5e38;
    let bytes = raw_npy(
        1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (24,), }\n",
        &le_f64(&values),
    );
    assert!(err(&bytes, "x").contains("value -3.5e38 at index 17"));
}

#[test]
fn f64_overflow_index_is_c_order_for_fortran_arrays() {
    // Logical 2x3 array; element [1, 0] (C index 3) is at Fortran offset 1.
    let mut values = vec![0.0f64; 6];
    values[1] = 1e40;
    let bytes = raw_npy(
        1,
        "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }\n",
        &le_f64(&values),
    );
    assert!(err(&bytes, "x").contains("at index 3 "));
}

#[test]
fn reads_big_endian() {
    let bytes = raw_npy(
        1,
        "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }\n",
        &be_f32(&[1.5, -2.0, 3.25]),
    );
    let a = parse_npy(&bytes, "x").expect("parse");
    assert_eq!(a.data, [1.5, -2.0, 3.25]);
    let bytes = raw_npy(
        1,
        "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }\n",
        &be_f64(&[0.75, -1e10]),
    );
    let a = parse_npy(&bytes, "x").expect("parse");
    assert_eq!(a.data, [0.75, -1e10]);
    assert_eq!(a.dtype, Dtype::F64);
}

#[test]
fn reads_native_and_unprefixed_byte_order() {
    let native = if cfg!(target_endian = "big") {
        be_f32(&[1.0, 2.0])
    } else {
        le_f32(&[1.0, 2.0])
    };
    for descr in ["=f4", "|f4", "f4"] {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
        let a = parse_npy(&raw_npy(1, &header, &native), "x").expect(descr);
        assert_eq!(a.data, [1.0, 2.0]);
    }
}

#[test]
fn fortran_order_rank_2() {
    // Logical [[0, 1, 2], [3, 4, 5]] stored column by column.
    let bytes = raw_npy(
        1,
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n",
        &le_f32(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]),
    );
    let a = parse_npy(&bytes, "x").expect("parse");
    assert_eq!(a.shape, [2, 3]);
    assert_eq!(a.data, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn fortran_order_rank_3_and_4() {
    for shape in [vec![2usize, 3, 4], vec![3, 1, 2, 5], vec![4, 0, 2]] {
        let n: usize = shape.iter().product();
        // Fortran buffer: element at multi-index (i0, i1, ...) lives at
        // i0 + d0*(i1 + d1*(i2 + ...)); its logical C index is its value.
        let mut fortran = vec![0.0f32; n];
        for c in 0..n {
            let mut rem = c;
            let mut idx = vec![0; shape.len()];
            for axis in (0..shape.len()).rev() {
                idx[axis] = rem % shape[axis];
                rem /= shape[axis];
            }
            let mut f = 0;
            for axis in (0..shape.len()).rev() {
                f = f * shape[axis] + idx[axis];
            }
            fortran[f] = c as f32;
        }
        let header = format!(
            "{{'descr': '<f4', 'fortran_order': True, 'shape': {}, }}",
            shape_repr(&shape)
        );
        let a = parse_npy(&raw_npy(1, &header, &le_f32(&fortran)), "x").expect("parse");
        assert_eq!(a.shape, shape);
        assert_eq!(a.data, arange(n));
    }
}

#[test]
fn fortran_order_big_endian_f64() {
    let bytes = raw_npy(
        1,
        "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 2), }\n",
        &be_f64(&[1.0, 3.0, 2.0, 4.0]),
    );
    let a = parse_npy(&bytes, "x").expect("parse");
    assert_eq!(a.data, [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn header_versions_2_and_3() {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
    let a = parse_npy(&raw_npy(2, header, &le_f32(&[1.0, 2.0])), "x").expect("v2");
    assert_eq!(a.data, [1.0, 2.0]);
    let a = parse_npy(&raw_npy(3, header, &le_f32(&[1.0, 2.0])), "x").expect("v3");
    assert_eq!(a.data, [1.0, 2.0]);
}

#[test]
fn header_parser_tolerates_layout_variations() {
    let headers = [
        "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}",
        "{ \"descr\" : \"<f4\" ,\n 'fortran_order':False,'shape':(2,3,),}   \n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], 'extra': None}",
        "\t{'descr':'<f4','fortran_order':False,'shape':(2,3)}\0\0",
    ];
    for header in headers {
        let a = parse_npy(&raw_npy(1, header, &le_f32(&arange(6))), "x")
            .unwrap_or_else(|e| panic!("{header:?}: {e}"));
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data, arange(6));
    }
    let a = parse_npy(
        &raw_npy(
            1,
            "{'descr':'<f4','fortran_order':False,'shape':()}",
            &le_f32(&[4.5]),
        ),
        "x",
    )
    .expect("0-d");
    assert!(a.shape.is_empty());
    assert_eq!(a.data, [4.5]);
    let a = parse_npy(
        &raw_npy(
            1,
            "{'descr':'<f4','fortran_order':False,'shape':(5,)}",
            &le_f32(&arange(5)),
        ),
        "x",
    )
    .expect("1-d");
    assert_eq!(a.shape, [5]);
}

#[test]
fn zero_size_arrays_are_valid() {
    let bytes = raw_npy(
        1,
        "{'descr': '<f8', 'fortran_order': True, 'shape': (0, 96, 2), }\n",
        &[],
    );
    let a = parse_npy(&bytes, "x").expect("parse");
    assert_eq!(a.shape, [0, 96, 2]);
    assert!(a.data.is_empty());
}

// ----- errors ------------------------------------------------------------

#[test]
fn error_bad_magic() {
    let msg = err(b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "foo.npy");
    assert_eq!(
        msg,
        "\"foo.npy\" is not a .npy file: expected magic \\x93NUMPY, got \"PK\\x03\\x04\\x14\\x00\\x00\\x00\""
    );
    let msg = err(b"", "foo.npy");
    assert!(msg.ends_with("got an empty file"), "{msg}");
    let msg = err(b"\x93NUM", "foo.npy");
    assert!(msg.contains("got \"\\x93NUM\""), "{msg}");
}

#[test]
fn error_unsupported_version() {
    let mut bytes = npy_bytes(&[1], &[1.0]);
    bytes[6] = 4;
    let msg = err(&bytes, "x");
    assert!(
        msg.contains("unsupported .npy format version 4.0 (expected 1.0, 2.0 or 3.0)"),
        "{msg}"
    );
}

#[test]
fn error_truncated_header() {
    let full = npy_bytes(&[2, 3], &arange(6));
    let msg = err(&full[..7], "x");
    assert_eq!(
        msg,
        "array \"x\": truncated .npy header: expected 10 bytes, file has 7"
    );
    let msg = err(&full[..40], "x");
    assert_eq!(
        msg,
        "array \"x\": truncated .npy header: expected 128 bytes, file has 40"
    );
    let v2 = raw_npy(2, "{}", &[]);
    let msg = err(&v2[..11], "x");
    assert!(msg.contains("expected 12 bytes, file has 11"), "{msg}");
    // A version 2.0 length of nearly 4 GiB is just a truncated header.
    let mut huge = v2.clone();
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let msg = err(&huge, "x");
    assert!(
        msg.contains("truncated .npy header: expected 4294967307 bytes"),
        "{msg}"
    );
}

#[test]
fn error_header_not_a_dict() {
    let bytes = raw_npy(1, "('<f4', False, (2,))", &le_f32(&[1.0, 2.0]));
    let msg = err(&bytes, "x");
    assert!(
        msg.starts_with("array \"x\": .npy header is not a dict: expected {'descr'"),
        "{msg}"
    );
    assert!(msg.ends_with("got ('<f4', False, (2,))"), "{msg}");
}

#[test]
fn error_missing_key() {
    let bytes = raw_npy(1, "{'descr': '<f4', 'shape': (2,)}", &le_f32(&[1.0, 2.0]));
    let msg = err(&bytes, "x");
    assert!(
        msg.starts_with("array \"x\": .npy header has no 'fortran_order' key"),
        "{msg}"
    );
    assert!(msg.contains("{'descr': '<f4', 'shape': (2,)}"), "{msg}");
    let bytes = raw_npy(
        1,
        "{'fortran_order': False, 'shape': (2,)}",
        &le_f32(&[1.0, 2.0]),
    );
    assert!(err(&bytes, "x").contains("no 'descr' key"));
    let bytes = raw_npy(
        1,
        "{'descr': '<f4', 'fortran_order': False}",
        &le_f32(&[1.0]),
    );
    assert!(err(&bytes, "x").contains("no 'shape' key"));
}

#[test]
fn error_malformed_header() {
    let cases = [
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
            "expected ',' or '}'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x",
            "unexpected text after the header dict",
        ),
        (
            "{'descr': '<f4, 'fortran_order': False}",
            "expected ',' or '}'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
            "'fortran_order' must be True or False, got 0",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': 2}",
            "'shape' must be a tuple",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}",
            "got (-2,)",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
            "fit in usize",
        ),
        (
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}",
            "expected a Python literal at offset 34, found 'Maybe",
        ),
        ("{descr: '<f4'}", "expected a string key or '}'"),
        (
            "",
            "expected a Python literal at offset 0, found end of header",
        ),
    ];
    for (header, want) in cases {
        let msg = err(&raw_npy(1, header, &le_f32(&[1.0, 2.0])), "x");
        assert!(
            msg.starts_with("array \"x\": malformed .npy header: "),
            "{msg}"
        );
        assert!(msg.contains(want), "{header:?} -> {msg}");
    }
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let msg = err(&raw_npy(1, &deep, &[]), "x");
    assert!(msg.contains("nested more than 32 deep"), "{msg}");
}

#[test]
fn error_invalid_utf8_in_version_3_header() {
    let mut bytes = raw_npy(3, "{'descr': '<f4'}", &[]);
    bytes[14] = 0xff;
    let msg = err(&bytes, "x");
    assert!(
        msg.contains("version 3.0 header is not valid UTF-8"),
        "{msg}"
    );
    // Version 1.0 headers are latin-1: the same byte is just a character.
    let mut bytes = raw_npy(
        1,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'n': 'X'}",
        &le_f32(&[1.0]),
    );
    let at = bytes.iter().position(|&b| b == b'X').expect("marker");
    bytes[at] = 0xe9;
    assert_eq!(parse_npy(&bytes, "x").expect("latin-1").data, [1.0]);
}

#[test]
fn error_unsupported_dtypes() {
    for descr in ["<i8", "<f2", "|O", "<c8", "<f16", "|u1", ""] {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,)}}");
        let msg = err(&raw_npy(1, &header, &[0; 8]), "x");
        assert_eq!(
            msg,
            format!(
                "array \"x\": unsupported dtype '{descr}' (expected float32 '<f4' or float64 '<f8')"
            )
        );
    }
    let header = "{'descr': [('a', '<f4'), ('b', '<f8')], 'fortran_order': False, 'shape': (1,)}";
    let msg = err(&raw_npy(1, header, &[0; 12]), "x");
    assert!(
        msg.contains("unsupported dtype '[('a', '<f4'), ('b', '<f8')]' (expected float32"),
        "{msg}"
    );
}

#[test]
fn error_data_length() {
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 96, 2), }";
    let msg = err(&raw_npy(1, header, &[0; 7000]), "x");
    assert_eq!(
        msg,
        "array \"x\": shape (10, 96, 2) of float32 needs 7680 bytes of data, file has 7000"
    );
    let mut bytes = npy_bytes(&[10, 96, 2], &[0.0; 1920]);
    bytes.extend_from_slice(&[0; 3]);
    let msg = err(&bytes, "x");
    assert_eq!(
        msg,
        "array \"x\": shape (10, 96, 2) of float32 needs 7680 bytes of data, file has 7683"
    );
    let header = "{'descr': '>f8', 'fortran_order': False, 'shape': (), }";
    let msg = err(&raw_npy(1, header, &[0; 4]), "x");
    assert_eq!(
        msg,
        "array \"x\": shape () of float64 needs 8 bytes of data, file has 4"
    );
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }";
    let msg = err(&raw_npy(1, header, &[0; 4]), "x");
    assert!(msg.contains("needs 0 bytes of data, file has 4"), "{msg}");
}

#[test]
fn error_huge_shape_does_not_overflow_or_allocate() {
    for shape in [
        "(18446744073709551615, 2)",
        "(4294967296, 4294967296)",
        "(0, 4294967296, 4294967296)",
        "(2305843009213693952,)",
    ] {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let msg = err(&raw_npy(1, &header, &[0; 16]), "x");
        assert!(msg.contains("is too large"), "{shape}: {msg}");
        assert!(msg.contains(&format!("shape {shape} of float32")), "{msg}");
    }
    // Large but representable: rejected by the length check without allocating.
    let header = "{'descr': '<f8', 'fortran_order': True, 'shape': (1000000000, 1000), }";
    let msg = err(&raw_npy(1, header, &[0; 16]), "x");
    assert!(
        msg.contains("needs 8000000000000 bytes of data, file has 16"),
        "{msg}"
    );
}

#[test]
fn error_read_npy_missing_file_names_path() {
    let dir = TempDir::new("missing");
    let path = dir.path("nope.npy");
    let e = read_npy(&path).expect_err("missing");
    let msg = e.to_string();
    assert!(msg.starts_with("cannot read \""), "{msg}");
    assert!(msg.contains("nope.npy"), "{msg}");
    let e = read_npz(&dir.path("nope.npz")).expect_err("missing");
    assert!(e.to_string().starts_with("cannot open \""), "{e}");
    assert!(e.to_string().contains("nope.npz"), "{e}");
}

#[test]
fn error_read_npy_names_file() {
    let dir = TempDir::new("names");
    let path = dir.path("inputs.npy");
    std::fs::write(&path, b"hello world").expect("write");
    let msg = read_npy(&path).expect_err("magic").to_string();
    assert!(msg.contains("inputs.npy\" is not a .npy file"), "{msg}");
}

#[test]
fn error_npz_not_zip() {
    let dir = TempDir::new("notzip");
    let path = dir.path("data.npz");
    std::fs::write(&path, npy_bytes(&[1], &[1.0])).expect("write");
    let e = read_npz(&path).expect_err("not zip");
    assert!(matches!(e, NpyError::NotZip { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("data.npz\" is not a readable .npz (zip) archive"),
        "{msg}"
    );
}

fn zip_with(path: &Path, entries: &[(&str, &[u8])]) {
    let file = File::create(path).expect("create");
    let mut zip = zip::ZipWriter::new(file);
    for (name, bytes) in entries {
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        zip.start_file(*name, stored).expect("start");
        zip.write_all(bytes).expect("write");
    }
    zip.finish().expect("finish");
}

#[test]
fn error_npz_entry_not_npy() {
    let dir = TempDir::new("npzentry");
    let path = dir.path("data.npz");
    let ok = npy_bytes(&[1], &[1.0]);
    zip_with(&path, &[("x.npy", &ok), ("notes.txt", b"hi")]);
    let msg = read_npz(&path).expect_err("txt").to_string();
    assert!(
        msg.contains("data.npz\": entry \"notes.txt\" is not a .npy array"),
        "{msg}"
    );

    zip_with(&path, &[("x.npy", b"not numpy")]);
    let msg = read_npz(&path).expect_err("magic").to_string();
    assert!(
        msg.contains("data.npz:x\" is not a .npy file: expected magic"),
        "{msg}"
    );

    let mut bad = npy_bytes(&[2], &[1.0, 2.0]);
    bad.truncate(bad.len() - 1);
    zip_with(&path, &[("y.npy", &bad)]);
    let msg = read_npz(&path).expect_err("length").to_string();
    assert!(
        msg.contains("data.npz:y\": shape (2,) of float32 needs 8 bytes of data, file has 7"),
        "{msg}"
    );
}

#[test]
fn error_npz_corrupt_entry() {
    let dir = TempDir::new("npzcrc");
    let path = dir.path("data.npz");
    let payload = npy_bytes(&[16], &[3.0; 16]);
    zip_with(&path, &[("x.npy", &payload)]);
    // Flip a data byte inside the stored entry: the CRC check must fail.
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes
        .windows(4)
        .position(|w| w == 3.0f32.to_le_bytes())
        .expect("payload");
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let e = read_npz(&path).expect_err("crc");
    let msg = e.to_string();
    assert!(msg.contains("cannot read entry \"x.npy\" of \""), "{msg}");
}

#[test]
fn malformed_inputs_return_errors_not_panics() {
    let fixtures: [&[u8]; 3] = [
        include_bytes!("../../tests/data/numpy_fortran_f4.npy"),
        include_bytes!("../../tests/data/numpy_v3_f8.npy"),
        include_bytes!("../../tests/data/numpy_big_endian_f8.npy"),
    ];
    for original in fixtures {
        for len in 0..original.len() {
            assert!(parse_npy(&original[..len], "cut").is_err());
        }
        // Overwrite each header byte with characters that matter to the parser.
        let data_start = original.len() - 48;
        for at in 0..data_start {
            for b in [b'\0', b'\'', b'(', b')', b',', b'9', b'-', b'{', b'[', 0xff] {
                let mut bytes = original.to_vec();
                bytes[at] = b;
                let _ = parse_npy(&bytes, "mutated");
            }
        }
    }
}

// ----- files written by NumPy ---------------------------------------------

fn expect_array(a: &Array, shape: &[usize], dtype: Dtype, data: &[f32]) {
    assert_eq!(a.shape, shape);
    assert_eq!(a.dtype, dtype);
    assert_eq!(a.data, data);
}

/// `(arange(24) * 0.5 - 3).reshape(2, 3, 4)` as float32.
fn numpy_x() -> Vec<f32> {
    (0..24).map(|i| i as f32 * 0.5 - 3.0).collect()
}

/// `(arange(12) / 7).reshape(3, 4)` as float64, converted to float32.
fn numpy_y() -> Vec<f32> {
    (0..12).map(|i| (f64::from(i) / 7.0) as f32).collect()
}

/// `(arange(6) * 1.5 - 2).reshape(3, 2)` as big-endian float64.
fn numpy_y_val() -> Vec<f32> {
    (0..6).map(|i| (f64::from(i) * 1.5 - 2.0) as f32).collect()
}

#[test]
fn numpy_npy_files() {
    let parse = |bytes: &[u8], name: &str| parse_npy(bytes, name).expect(name);
    let a = parse(include_bytes!("../../tests/data/numpy_f32.npy"), "f32");
    expect_array(&a, &[2, 3, 4], Dtype::F32, &numpy_x());
    let a = parse(include_bytes!("../../tests/data/numpy_f64.npy"), "f64");
    expect_array(&a, &[3, 4], Dtype::F64, &numpy_y());
    let a = parse(
        include_bytes!("../../tests/data/numpy_big_endian_f4.npy"),
        "be4",
    );
    let want: Vec<f32> = (0..6).map(|i| i as f32 + 0.25).collect();
    expect_array(&a, &[2, 3], Dtype::F32, &want);
    let a = parse(
        include_bytes!("../../tests/data/numpy_big_endian_f8.npy"),
        "be8",
    );
    expect_array(&a, &[3, 2], Dtype::F64, &numpy_y_val());
    let a = parse(
        include_bytes!("../../tests/data/numpy_fortran_f4.npy"),
        "fortran",
    );
    expect_array(&a, &[2, 3, 4], Dtype::F32, &arange(24));
    let a = parse(
        include_bytes!("../../tests/data/numpy_fortran_f8_be.npy"),
        "fortran_be",
    );
    let want: Vec<f32> = (0..6).map(|i| (f64::from(i) / 3.0) as f32).collect();
    expect_array(&a, &[2, 3], Dtype::F64, &want);
    let a = parse(
        include_bytes!("../../tests/data/numpy_scalar_f4.npy"),
        "scalar",
    );
    expect_array(&a, &[], Dtype::F32, &[3.5]);
    let a = parse(
        include_bytes!("../../tests/data/numpy_empty_f4.npy"),
        "empty",
    );
    expect_array(&a, &[0, 3, 2], Dtype::F32, &[]);
    let a = parse(include_bytes!("../../tests/data/numpy_v2_f4.npy"), "v2");
    expect_array(&a, &[5], Dtype::F32, &arange(5));
    let a = parse(include_bytes!("../../tests/data/numpy_v3_f8.npy"), "v3");
    expect_array(&a, &[5], Dtype::F64, &arange(5));

    let msg = err(include_bytes!("../../tests/data/numpy_i8.npy"), "ints");
    assert_eq!(
        msg,
        "array \"ints\": unsupported dtype '<i8' (expected float32 '<f4' or float64 '<f8')"
    );
}

#[test]
fn numpy_npy_bytes_match_numpy_save() {
    // np.save of a C-order little-endian float32 array is byte-identical.
    let ours = npy_bytes(&[2, 3, 4], &numpy_x());
    assert_eq!(ours, include_bytes!("../../tests/data/numpy_f32.npy"));
    let ours = npy_bytes(&[], &[3.5]);
    assert_eq!(ours, include_bytes!("../../tests/data/numpy_scalar_f4.npy"));
    let ours = npy_bytes(&[0, 3, 2], &[]);
    assert_eq!(ours, include_bytes!("../../tests/data/numpy_empty_f4.npy"));
}

fn read_fixture_npz(name: &str, bytes: &[u8]) -> BTreeMap<String, Array> {
    let dir = TempDir::new("fixture");
    let path = dir.path(name);
    std::fs::write(&path, bytes).expect("write fixture");
    read_npz(&path).expect(name)
}

#[test]
fn numpy_savez() {
    let arrays = read_fixture_npz(
        "numpy_savez.npz",
        include_bytes!("../../tests/data/numpy_savez.npz"),
    );
    let keys: Vec<&str> = arrays.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cond", "x", "y"]);
    expect_array(&arrays["x"], &[2, 3, 4], Dtype::F32, &numpy_x());
    expect_array(&arrays["y"], &[3, 4], Dtype::F64, &numpy_y());
    expect_array(&arrays["cond"], &[3], Dtype::F32, &[1.0, -2.0, 0.5]);
}

#[test]
fn numpy_savez_compressed() {
    let arrays = read_fixture_npz(
        "numpy_savez_compressed.npz",
        include_bytes!("../../tests/data/numpy_savez_compressed.npz"),
    );
    let keys: Vec<&str> = arrays.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cond", "scalar", "x", "x_val", "y", "y_val"]);
    expect_array(&arrays["x"], &[2, 3, 4], Dtype::F32, &numpy_x());
    expect_array(&arrays["y"], &[3, 4], Dtype::F64, &numpy_y());
    expect_array(&arrays["x_val"], &[2, 3, 4], Dtype::F32, &arange(24));
    expect_array(&arrays["y_val"], &[3, 2], Dtype::F64, &numpy_y_val());
    expect_array(&arrays["cond"], &[0, 2], Dtype::F32, &[]);
    expect_array(&arrays["scalar"], &[], Dtype::F32, &[3.5]);
}

#[test]
fn numpy_npz_entry_errors_name_archive_and_key() {
    // Corrupt the header of one entry of a stored (uncompressed) archive.
    let mut bytes = include_bytes!("../../tests/data/numpy_savez.npz").to_vec();
    let at = bytes
        .windows(5)
        .position(|w| w == b"'<f8'")
        .expect("y header");
    bytes[at + 2] = b'i';
    let dir = TempDir::new("fixture-bad");
    let path = dir.path("bad.npz");
    std::fs::write(&path, &bytes).expect("write");
    // The CRC no longer matches, so the archive layer reports it first.
    let msg = read_npz(&path).expect_err("crc").to_string();
    assert!(msg.contains("cannot read entry \"y.npy\""), "{msg}");
}

#[test]
fn npz_limits_are_checked_before_anything_is_decompressed() {
    let dir = TempDir::new("limits");
    let path = dir.path("big.npz");
    // 4 MiB of zeros compresses to a few KiB
    let zeros = vec![0.0f32; 1 << 20];
    write_npz(
        &path,
        &[("x", &[1 << 20], &zeros), ("y", &[2], &[1.0, 2.0])],
    )
    .expect("write");
    assert!(std::fs::metadata(&path).unwrap().len() < 64 << 10);
    let opts = |max: u64| NpzOptions {
        names: None,
        max_bytes: Some(max),
    };
    // raw data plus the converted values: 8 MiB for x
    let e = read_npz_with(&path, &opts(1 << 20))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("big.npz:x") && e.contains("(1048576,)") && e.contains("8388608 bytes"),
        "{e}"
    );
    assert!(e.contains("configured ceiling of 1048576"), "{e}");
    let arrays = read_npz_with(&path, &opts(16 << 20)).expect("within the ceiling");
    assert_eq!(arrays["x"].data.len(), 1 << 20);
    // only the expected names
    let e = read_npz_with(
        &path,
        &NpzOptions {
            names: Some(&["y"]),
            max_bytes: None,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unexpected array `x`") && e.contains("expected arrays: y"),
        "{e}"
    );
    // an entry whose header claims far more than the ceiling is refused from its header alone
    let mut huge = npy_bytes(&[1], &[0.0]);
    let at = huge.windows(4).position(|w| w == b"(1,)").unwrap();
    huge.splice(at..at + 4, b"(100000000000,)".iter().copied());
    let bomb = dir.path("bomb.npz");
    zip_with(&bomb, &[("x.npy", &huge)]);
    let e = read_npz_with(&bomb, &opts(1 << 30))
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs") && e.contains("more than"), "{e}");
}
