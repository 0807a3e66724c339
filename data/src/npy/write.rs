//! Writing little-endian `float32` `.npy` files and deflate-compressed `.npz` archives,
//! atomically (see [`runtime::fs::write_atomic_with`]).

use std::io::{self, Write};
use std::path::Path;

use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

use super::*;

/// Serialises a little-endian `float32` C-order array as a complete `.npy`
/// file: version 1.0 header (`'<f4'`, `fortran_order: False`), padded with
/// spaces and a final `'\n'` so the data starts at a multiple of 64 bytes.
/// (Only a header too long for version 1.0, which needs thousands of axes,
/// falls back to version 2.0, as NumPy does.)
///
/// # Panics
///
/// If `data.len()` is not the product of `shape`; [`write_npy`] and
/// [`write_npz`] check this and return [`NpyError::ShapeMismatch`] instead.
pub fn npy_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert!(
        element_count(shape) == Some(data.len()),
        "npy_bytes: shape {} does not match {} values",
        shape_repr(shape),
        data.len()
    );
    let header = header_bytes(shape);
    let mut out = Vec::with_capacity(header.len() + data.len() * 4);
    out.extend_from_slice(&header);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a little-endian `float32` C-order `.npy` file (see [`npy_bytes`]),
/// via a temporary file in the same directory that is renamed into place.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    check_shape(&path.display().to_string(), shape, data)?;
    runtime::fs::write_atomic_with(path, |w| write_array(w, shape, data)).map_err(write_error)
}

/// Writes an `.npz` archive with one deflate-compressed entry `"<name>.npy"`
/// per `(name, shape, data)`, readable by `numpy.load` and [`read_npz`].
///
/// Names must be non-empty, unique and free of path separators. The archive
/// is written to a temporary file in the same directory, then renamed.
pub fn write_npz(path: &Path, arrays: &[(&str, &[usize], &[f32])]) -> Result<(), NpyError> {
    let mut seen = std::collections::BTreeSet::new();
    for &(name, shape, data) in arrays {
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.contains(['/', '\\', '\0']) {
            Some("contains a path separator or NUL")
        } else if !seen.insert(name) {
            Some("used twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(NpyError::InvalidName {
                path: path.to_owned(),
                name: name.to_owned(),
                reason,
            });
        }
        check_shape(&format!("{}:{name}", path.display()), shape, data)?;
    }

    runtime::fs::write_atomic_with(path, |w| {
        let mut zip = zip::ZipWriter::new(w);
        for &(name, shape, data) in arrays {
            let size = header_bytes(shape).len() as u64 + data.len() as u64 * 4;
            let options = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .large_file(size >= u64::from(u32::MAX));
            zip.start_file(format!("{name}.npy"), options)
                .map_err(io::Error::other)?;
            write_array(&mut zip, shape, data)?;
        }
        zip.finish().map_err(io::Error::other)?;
        Ok(())
    })
    .map_err(write_error)
}

/// A failed atomic write, naming the destination.
fn write_error(e: runtime::fs::FileError) -> NpyError {
    NpyError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    }
}

/// The version 1.0 (or, if needed, 2.0) header for a `'<f4'` C-order array.
fn header_bytes(shape: &[usize]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}",
        shape_repr(shape)
    );
    // Preamble: magic, 2 version bytes, then the header length in 2 bytes
    // (version 1.0) or, for headers longer than u16::MAX, 4 bytes (2.0).
    let total_v1 = (MAGIC.len() + 4 + dict.len() + 1).next_multiple_of(DATA_ALIGN);
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    let total = match u16::try_from(total_v1 - (MAGIC.len() + 4)) {
        Ok(len) => {
            out.extend_from_slice(&[1, 0]);
            out.extend_from_slice(&len.to_le_bytes());
            total_v1
        }
        Err(_) => {
            let total = (MAGIC.len() + 6 + dict.len() + 1).next_multiple_of(DATA_ALIGN);
            let len = u32::try_from(total - (MAGIC.len() + 6)).unwrap_or(u32::MAX);
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&len.to_le_bytes());
            total
        }
    };
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Writes header and data to `w`, converting values in chunks.
fn write_array(w: &mut impl Write, shape: &[usize], data: &[f32]) -> io::Result<()> {
    w.write_all(&header_bytes(shape))?;
    let mut buf = Vec::with_capacity(4 * 4096);
    for chunk in data.chunks(4096) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Checks that `data` holds exactly the number of values `shape` describes.
fn check_shape(what: &str, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    match element_count(shape) {
        Some(n) if n == data.len() => Ok(()),
        count => Err(NpyError::ShapeMismatch {
            what: what.to_owned(),
            shape: shape_repr(shape),
            expected: count.map_or(ExpectedCount::Overflow, ExpectedCount::Exactly),
            actual: data.len(),
        }),
    }
}
