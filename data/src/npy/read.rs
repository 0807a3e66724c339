//! Reading `.npy` files and `.npz` archives. Sizes computed from a header are checked for
//! overflow, against the bytes present and against the memory allowed before any buffer for the
//! data is allocated.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::*;

/// Parses the bytes of a complete `.npy` file.
///
/// `what` names the array in error messages (e.g. `"x"` or `"inputs.npy"`).
/// Accepts format versions 1.0–3.0, `float32`/`float64` in little, big or
/// native byte order, and C or Fortran order; returns the values as `f32` in
/// C order. The data section must be exactly as long as the shape requires.
pub fn parse_npy(bytes: &[u8], what: &str) -> Result<Array, NpyError> {
    let (header, data) = split_header(bytes, what)?;
    let meta = parse_header(&header, what)?;
    let dtype = meta.dtype;

    let Some(nbytes) = byte_size(&meta.shape, dtype.size()) else {
        return Err(NpyError::ShapeTooLarge {
            what: what.to_owned(),
            shape: shape_repr(&meta.shape),
            dtype,
        });
    };
    if nbytes != data.len() {
        return Err(NpyError::DataLength {
            what: what.to_owned(),
            shape: shape_repr(&meta.shape),
            dtype,
            expected: nbytes,
            actual: data.len(),
        });
    }

    let count = nbytes / dtype.size();
    let values = if meta.fortran_order && meta.shape.len() > 1 {
        let order = FortranToC::new(&meta.shape);
        decode(data, dtype, meta.big_endian, count, order, what)?
    } else if dtype == Dtype::F32 {
        // Common case: a straight copy, without per-element index arithmetic.
        let chunks = data.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
        if meta.big_endian {
            chunks.map(f32::from_be_bytes).collect()
        } else {
            chunks.map(f32::from_le_bytes).collect()
        }
    } else {
        decode(data, dtype, meta.big_endian, count, 0..count, what)?
    };
    Ok(Array {
        shape: meta.shape,
        data: values,
        dtype,
    })
}

/// Reads a `.npy` file; errors name the file by its path.
pub fn read_npy(path: &Path) -> Result<Array, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    parse_npy(&bytes, &path.display().to_string())
}

/// Reads every array of an `.npz` archive (from `numpy.savez` or
/// `numpy.savez_compressed`), keyed by entry name without the `.npy` suffix, with the default
/// [`NpzOptions`] (any names; at most the memory available).
///
/// Every entry must be a `.npy` file; errors about an entry's contents name it
/// as `"<archive path>:<key>"`.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>, NpyError> {
    read_npz_with(path, &NpzOptions::default())
}

/// What an `.npz` reader accepts.
#[derive(Debug, Clone, Default)]
pub struct NpzOptions<'a> {
    /// The only array names accepted (`None`: any). Another name is an error before anything
    /// is decompressed.
    pub names: Option<&'a [&'a str]>,
    /// Most bytes all arrays together may need in memory (raw data plus the converted `f32`
    /// values); `None`: the memory the system reports available, if it reports any.
    pub max_bytes: Option<u64>,
}

/// Longest `.npy` header accepted inside an archive (NumPy's own headers are a few hundred bytes).
const MAX_ENTRY_HEADER: usize = 1 << 20;

/// Most bytes read from an entry whose header is invalid, to let the archive's checksum speak.
const MAX_DRAIN: u64 = 16 << 20;

/// Memory available to this process, from `/proc/meminfo` where there is one.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Reads the arrays of an `.npz` archive with `opts`. Only the expected names are accepted,
/// checked before anything is decompressed. Each entry's header is read and checked before its
/// data is: the shape must need no more memory than allowed (the entry and all before it
/// together), and never more than the shape describes is decompressed, so an entry that inflates
/// beyond its shape (a zip bomb) costs no more than an honest one of that shape.
pub fn read_npz_with(
    path: &Path,
    opts: &NpzOptions<'_>,
) -> Result<BTreeMap<String, Array>, NpyError> {
    let file = File::open(path).map_err(|source| NpyError::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    let not_zip = |source| NpyError::NotZip {
        path: path.to_owned(),
        source,
    };
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file)).map_err(not_zip)?;
    let (limit, why) = match (opts.max_bytes, available_memory()) {
        (Some(m), Some(a)) if a < m => (a, format!("the {a} bytes of memory available")),
        (Some(m), _) => (m, format!("the configured ceiling of {m} bytes")),
        (None, Some(a)) => (a, format!("the {a} bytes of memory available")),
        (None, None) => (u64::MAX, String::new()),
    };

    // Names first: nothing is decompressed from an archive that holds unexpected arrays.
    let mut keys = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(not_zip)?;
        let name = entry.name().to_owned();
        let key = match name.strip_suffix(".npy") {
            Some(k) if !k.is_empty() && !entry.is_dir() => k.to_owned(),
            _ => {
                return Err(NpyError::NpzEntryNotNpy {
                    path: path.to_owned(),
                    entry: name,
                });
            }
        };
        if let Some(names) = opts.names
            && !names.contains(&key.as_str())
        {
            return Err(NpyError::NpzUnexpected {
                path: path.to_owned(),
                key,
                expected: names.join(", "),
            });
        }
        if keys.contains(&key) {
            return Err(NpyError::NpzDuplicate {
                path: path.to_owned(),
                key,
            });
        }
        keys.push(key);
    }

    let mut arrays = BTreeMap::new();
    let mut needed_total = 0u64;
    for (index, key) in keys.into_iter().enumerate() {
        let mut entry = archive.by_index(index).map_err(not_zip)?;
        let name = entry.name().to_owned();
        let declared = entry.size();
        let what = format!("{}:{key}", path.display());
        let read_err = |source| NpyError::NpzEntryRead {
            path: path.to_owned(),
            entry: name.clone(),
            source,
        };
        let size_err = |reason: String| NpyError::NpzEntrySize {
            path: path.to_owned(),
            entry: name.clone(),
            reason,
        };
        // The header: magic, version, its length, then the header text.
        let mut bytes = Vec::new();
        (&mut entry)
            .take(12)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let header_len = match (bytes.get(6), bytes.get(8..12)) {
            (Some(1), Some(l)) => 10 + usize::from(u16::from_le_bytes([l[0], l[1]])),
            (Some(2 | 3), Some(l)) => {
                12 + usize::try_from(u32::from_le_bytes([l[0], l[1], l[2], l[3]]))
                    .unwrap_or(usize::MAX)
            }
            _ => bytes.len().max(10),
        };
        if header_len > MAX_ENTRY_HEADER {
            return Err(size_err(format!(
                "has a header of {header_len} bytes, more than the {MAX_ENTRY_HEADER} accepted"
            )));
        }
        let more = header_len.saturating_sub(bytes.len()) as u64;
        (&mut entry)
            .take(more)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let meta = match split_header(&bytes, &what).and_then(|(h, _)| parse_header(&h, &what)) {
            Ok(m) => m,
            Err(e) => {
                // a corrupt archive is reported as such (its checksum), within a bounded read
                let mut sink = Vec::new();
                (&mut entry)
                    .take(declared.min(MAX_DRAIN))
                    .read_to_end(&mut sink)
                    .map_err(read_err)?;
                return Err(e);
            }
        };
        let dtype = meta.dtype;
        let shape = shape_repr(&meta.shape);
        let Some(data_len) = byte_size(&meta.shape, dtype.size()) else {
            return Err(NpyError::ShapeTooLarge { what, shape, dtype });
        };
        let values = (data_len / dtype.size()) as u64;
        needed_total = needed_total
            .saturating_add(data_len as u64)
            .saturating_add(values.saturating_mul(4));
        if needed_total > limit {
            return Err(NpyError::TooLarge {
                what,
                shape,
                dtype,
                needed: needed_total,
                limit: why,
            });
        }
        // Never more than the header describes (plus one byte, to notice a longer entry): an
        // entry that inflates beyond its shape cannot take more memory than the shape allowed.
        bytes.reserve_exact(data_len.min(declared as usize));
        (&mut entry)
            .take(data_len as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        let array = parse_npy(&bytes, &what)?;
        arrays.insert(key, array);
    }
    Ok(arrays)
}

/// Splits a `.npy` file into its header text and its data section.
fn split_header<'a>(bytes: &'a [u8], what: &str) -> Result<(String, &'a [u8]), NpyError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC[..] {
        return Err(NpyError::BadMagic {
            what: what.to_owned(),
            got: escape_bytes(&bytes[..bytes.len().min(8)]),
        });
    }
    let truncated = |expected: usize| NpyError::TruncatedHeader {
        what: what.to_owned(),
        expected,
        actual: bytes.len(),
    };
    let (Some(&major), Some(&minor)) = (bytes.get(6), bytes.get(7)) else {
        return Err(truncated(10));
    };
    let (prefix, header_len) = match (major, minor) {
        (1, 0) => {
            let Some(len) = bytes.get(8..10) else {
                return Err(truncated(10));
            };
            (10, usize::from(u16::from_le_bytes([len[0], len[1]])))
        }
        (2 | 3, 0) => {
            let Some(len) = bytes.get(8..12) else {
                return Err(truncated(12));
            };
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
            // A header longer than the address space cannot be present in `bytes`.
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            (12, len)
        }
        _ => {
            return Err(NpyError::UnsupportedVersion {
                what: what.to_owned(),
                major,
                minor,
            });
        }
    };
    let end = prefix + header_len.min(usize::MAX - prefix);
    let Some(raw) = bytes.get(prefix..end) else {
        return Err(truncated(end));
    };
    let header = if major == 3 {
        match std::str::from_utf8(raw) {
            Ok(text) => text.to_owned(),
            Err(err) => {
                return Err(NpyError::BadHeader {
                    what: what.to_owned(),
                    reason: format!("version 3.0 header is not valid UTF-8 ({err})"),
                    header: excerpt(&String::from_utf8_lossy(raw)),
                });
            }
        }
    } else {
        // Versions 1.0 and 2.0 are latin-1, where every byte is its own code point.
        raw.iter().map(|&b| char::from(b)).collect()
    };
    Ok((header, &bytes[end..]))
}

/// The three facts a `.npy` header provides.
#[derive(Debug)]
struct HeaderMeta {
    dtype: Dtype,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Interprets the header dict.
fn parse_header(header: &str, what: &str) -> Result<HeaderMeta, NpyError> {
    let bad = |reason: String| NpyError::BadHeader {
        what: what.to_owned(),
        reason,
        header: excerpt(header),
    };
    let value = Parser::new(header).parse_document().map_err(bad)?;
    let Value::Dict(entries) = value.kind else {
        return Err(NpyError::HeaderNotDict {
            what: what.to_owned(),
            header: excerpt(header),
        });
    };
    let get = |key: &'static str| {
        // Python keeps the last of repeated keys.
        entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| NpyError::MissingKey {
                what: what.to_owned(),
                key,
                header: excerpt(header),
            })
    };
    let descr = get("descr")?;
    let fortran_order = get("fortran_order")?;
    let shape = get("shape")?;

    let (dtype, big_endian) = match &descr.kind {
        Value::Str(s) => parse_descr(s).ok_or_else(|| NpyError::UnsupportedDtype {
            what: what.to_owned(),
            descr: s.clone(),
        })?,
        _ => {
            return Err(NpyError::UnsupportedDtype {
                what: what.to_owned(),
                descr: descr.source.clone(),
            });
        }
    };

    let fortran_order = match fortran_order.kind {
        Value::Bool(b) => b,
        _ => {
            return Err(bad(format!(
                "'fortran_order' must be True or False, got {}",
                fortran_order.source
            )));
        }
    };

    let (Value::Tuple(dims) | Value::List(dims)) = &shape.kind else {
        return Err(bad(format!(
            "'shape' must be a tuple of non-negative integers, got {}",
            shape.source
        )));
    };
    let mut out = Vec::with_capacity(dims.len());
    for dim in dims {
        let parsed = match &dim.kind {
            Value::Int {
                negative: false,
                digits,
            } => digits.parse::<usize>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) => out.push(n),
            None => {
                return Err(bad(format!(
                    "'shape' must be a tuple of non-negative integers that fit in usize, got {}",
                    shape.source
                )));
            }
        }
    }

    Ok(HeaderMeta {
        dtype,
        big_endian,
        fortran_order,
        shape: out,
    })
}

/// Maps a `descr` string to an element type and byte order (`true` = big-endian).
fn parse_descr(descr: &str) -> Option<(Dtype, bool)> {
    let native_big = cfg!(target_endian = "big");
    let (big_endian, code) = match descr.as_bytes().first()? {
        b'<' => (false, &descr[1..]),
        b'>' => (true, &descr[1..]),
        // '|' ("not applicable") never appears for floats, but NumPy accepts it as native.
        b'=' | b'|' => (native_big, &descr[1..]),
        _ => (native_big, descr),
    };
    let dtype = match code {
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        _ => return None,
    };
    Some((dtype, big_endian))
}

/// Bytes needed by `shape` with elements of `item` bytes, or `None` if that
/// overflows `isize` (the largest possible allocation). As in NumPy, the
/// non-zero dimensions must multiply without overflow even when another
/// dimension is zero.
fn byte_size(shape: &[usize], item: usize) -> Option<usize> {
    let mut total = item;
    let mut zero = false;
    for &dim in shape {
        if dim == 0 {
            zero = true;
        } else {
            total = total.checked_mul(dim)?;
        }
    }
    if isize::try_from(total).is_err() {
        return None;
    }
    Some(if zero { 0 } else { total })
}

/// Converts the data section to `f32`, visiting source elements in the order
/// given by `order` (one source index per output element).
fn decode(
    data: &[u8],
    dtype: Dtype,
    big_endian: bool,
    count: usize,
    order: impl Iterator<Item = usize>,
    what: &str,
) -> Result<Vec<f32>, NpyError> {
    let mut out = Vec::with_capacity(count);
    match dtype {
        Dtype::F32 => {
            for src in order {
                let at = src * 4;
                let b = [data[at], data[at + 1], data[at + 2], data[at + 3]];
                out.push(if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                });
            }
        }
        Dtype::F64 => {
            for src in order {
                let at = src * 8;
                let mut b = [0u8; 8];
                b.copy_from_slice(&data[at..at + 8]);
                let wide = if big_endian {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                };
                let narrow = wide as f32;
                if narrow.is_infinite() && wide.is_finite() {
                    return Err(NpyError::ValueOverflow {
                        what: what.to_owned(),
                        value: wide,
                        index: out.len(),
                    });
                }
                out.push(narrow);
            }
        }
    }
    Ok(out)
}

/// Iterates, in C order of the logical array, over the flat indices of the
/// same elements in a Fortran-ordered buffer of the given shape.
#[derive(Debug)]
struct FortranToC {
    shape: Vec<usize>,
    /// Fortran strides in elements: 1, d0, d0*d1, ...
    strides: Vec<usize>,
    /// Current multi-index (C order: last axis fastest).
    index: Vec<usize>,
    /// Source offset of `index`.
    offset: usize,
    remaining: usize,
}

impl FortranToC {
    /// Callers guarantee the element count fits in `usize`.
    fn new(shape: &[usize]) -> Self {
        let mut strides = Vec::with_capacity(shape.len());
        let mut stride = 1usize;
        for &dim in shape {
            strides.push(stride);
            stride = stride.saturating_mul(dim);
        }
        FortranToC {
            shape: shape.to_vec(),
            strides,
            index: vec![0; shape.len()],
            offset: 0,
            remaining: element_count(shape).unwrap_or(0),
        }
    }
}

impl Iterator for FortranToC {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.offset;
        // Advance the odometer, last axis fastest.
        for axis in (0..self.shape.len()).rev() {
            self.index[axis] += 1;
            self.offset += self.strides[axis];
            if self.index[axis] < self.shape[axis] {
                break;
            }
            self.offset -= self.strides[axis] * self.index[axis];
            self.index[axis] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// Whether the `.npz` archive at `path` holds an array named `name` (false when it cannot be
/// read as an archive: the reader proper says why).
pub fn npz_has(path: &Path, name: &str) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let Ok(archive) = zip::ZipArchive::new(io::BufReader::new(file)) else {
        return false;
    };
    let want = format!("{name}.npy");
    archive.file_names().any(|n| n == want)
}
