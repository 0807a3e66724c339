//! Column chunks: pages, their compression, level and value encodings.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use flate2::read::MultiGzDecoder;

use super::meta::{Chunk, Column, Physical, size};
use super::thrift::Decoder;

/// Decoded values of one column chunk (or of a dictionary page).
#[derive(Debug)]
pub(super) enum Phys {
    I32(Vec<i32>),
    I64(Vec<i64>),
    I96(Vec<[u8; 12]>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Bytes),
}

/// Byte arrays stored back to back.
#[derive(Debug, Default)]
pub(super) struct Bytes {
    /// `offsets[i]..offsets[i + 1]` is value `i`; starts with 0.
    offsets: Vec<usize>,
    data: Vec<u8>,
}

impl Bytes {
    pub(super) fn get(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i]..self.offsets[i + 1]]
    }

    fn push(&mut self, v: &[u8]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.data.extend_from_slice(v);
        self.offsets.push(self.data.len());
    }

    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
}

/// `n` little-endian values of `W` bytes from the front of `data`.
fn fixed<const W: usize, T>(
    data: &[u8],
    n: usize,
    out: &mut Vec<T>,
    conv: fn([u8; W]) -> T,
) -> Result<(), String> {
    let need = n
        .checked_mul(W)
        .filter(|&b| b <= data.len())
        .ok_or_else(|| {
            format!(
                "a page of {} bytes cannot hold {n} values of {W} bytes",
                data.len()
            )
        })?;
    out.extend(
        data[..need]
            .chunks_exact(W)
            .map(|c| conv(c.try_into().expect("W bytes"))),
    );
    Ok(())
}

impl Phys {
    fn new(physical: Physical) -> Result<Self, String> {
        Ok(match physical {
            Physical::Int32 => Phys::I32(Vec::new()),
            Physical::Int64 => Phys::I64(Vec::new()),
            Physical::Int96 => Phys::I96(Vec::new()),
            Physical::Float => Phys::F32(Vec::new()),
            Physical::Double => Phys::F64(Vec::new()),
            Physical::ByteArray => Phys::Bytes(Bytes::default()),
            other => return Err(format!("cannot read {} values", other.name())),
        })
    }

    fn len(&self) -> usize {
        match self {
            Phys::I32(v) => v.len(),
            Phys::I64(v) => v.len(),
            Phys::I96(v) => v.len(),
            Phys::F32(v) => v.len(),
            Phys::F64(v) => v.len(),
            Phys::Bytes(b) => b.len(),
        }
    }

    /// Appends `n` PLAIN-encoded values.
    fn extend_plain(&mut self, data: &[u8], n: usize) -> Result<(), String> {
        match self {
            Phys::I32(v) => fixed(data, n, v, i32::from_le_bytes),
            Phys::I64(v) => fixed(data, n, v, i64::from_le_bytes),
            Phys::I96(v) => fixed(data, n, v, |b: [u8; 12]| b),
            Phys::F32(v) => fixed(data, n, v, f32::from_le_bytes),
            Phys::F64(v) => fixed(data, n, v, f64::from_le_bytes),
            Phys::Bytes(b) => {
                let mut p = 0;
                for i in 0..n {
                    let len = data
                        .get(p..p + 4)
                        .map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize)
                        .ok_or_else(|| format!("page ends before byte array {i} of {n}"))?;
                    let v = data
                        .get(p + 4..p + 4 + len)
                        .ok_or_else(|| format!("page ends inside byte array {i} of {n}"))?;
                    b.push(v);
                    p += 4 + len;
                }
                Ok(())
            }
        }
    }

    /// Appends `n` BYTE_STREAM_SPLIT-encoded values.
    fn extend_split(&mut self, data: &[u8], n: usize) -> Result<(), String> {
        fn split<const W: usize, T>(
            data: &[u8],
            n: usize,
            out: &mut Vec<T>,
            conv: fn([u8; W]) -> T,
        ) -> Result<(), String> {
            if n.checked_mul(W) != Some(data.len()) {
                return Err(format!(
                    "a BYTE_STREAM_SPLIT page of {} bytes does not hold {n} values of {W} bytes",
                    data.len()
                ));
            }
            out.extend((0..n).map(|i| conv(std::array::from_fn(|j| data[j * n + i]))));
            Ok(())
        }
        match self {
            Phys::I32(v) => split(data, n, v, i32::from_le_bytes),
            Phys::I64(v) => split(data, n, v, i64::from_le_bytes),
            Phys::F32(v) => split(data, n, v, f32::from_le_bytes),
            Phys::F64(v) => split(data, n, v, f64::from_le_bytes),
            _ => Err("BYTE_STREAM_SPLIT applies to numbers only".into()),
        }
    }

    /// Appends `n` DELTA_BINARY_PACKED-encoded integers.
    fn extend_delta(&mut self, data: &[u8], n: usize) -> Result<(), String> {
        let mut values = Vec::with_capacity(n);
        delta_binary_packed(data, n, &mut values)?;
        match self {
            // Deltas wrap in the column's width; truncating the i64 sums gives the same values.
            Phys::I32(v) => v.extend(values.iter().map(|&x| x as i32)),
            Phys::I64(v) => v.extend(values),
            _ => return Err("DELTA_BINARY_PACKED applies to int32 and int64 only".into()),
        }
        Ok(())
    }

    /// Appends `dict[i]` for each index.
    fn extend_from_dict(&mut self, dict: &Phys, indices: &[u32]) -> Result<(), String> {
        let n = dict.len();
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= n) {
            return Err(format!(
                "dictionary index {bad} is out of range (the dictionary has {n} values)"
            ));
        }
        let idx = indices.iter().map(|&i| i as usize);
        match (self, dict) {
            (Phys::I32(v), Phys::I32(d)) => v.extend(idx.map(|i| d[i])),
            (Phys::I64(v), Phys::I64(d)) => v.extend(idx.map(|i| d[i])),
            (Phys::I96(v), Phys::I96(d)) => v.extend(idx.map(|i| d[i])),
            (Phys::F32(v), Phys::F32(d)) => v.extend(idx.map(|i| d[i])),
            (Phys::F64(v), Phys::F64(d)) => v.extend(idx.map(|i| d[i])),
            (Phys::Bytes(b), Phys::Bytes(d)) => idx.for_each(|i| b.push(d.get(i))),
            _ => return Err("the dictionary's type differs from the column's".into()),
        }
        Ok(())
    }
}

/// `w` bits (at most 64) starting at bit `bit`, least significant bit first; missing bytes
/// past the end read as zero.
fn bits(data: &[u8], bit: usize, w: u32) -> u64 {
    if w == 0 {
        return 0;
    }
    let start = bit / 8;
    let mut buf = [0u8; 16];
    let tail = data.get(start..).unwrap_or_default();
    let avail = tail.len().min(9);
    buf[..avail].copy_from_slice(&tail[..avail]);
    let x = u128::from_le_bytes(buf) >> (bit % 8);
    (x & ((1u128 << w) - 1)) as u64
}

/// An unsigned LEB128 varint at `*p`.
fn uleb(data: &[u8], p: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data
            .get(*p)
            .ok_or_else(|| "page ends inside a varint".to_owned())?;
        *p += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("malformed varint".into())
}

/// Decodes `n` values of the RLE / bit-packing hybrid encoding with `w`-bit values.
fn rle_hybrid(data: &[u8], w: u32, n: usize, out: &mut Vec<u32>) -> Result<(), String> {
    if w > 32 {
        return Err(format!("bit width {w} is more than 32"));
    }
    let end = out.len() + n;
    let mut p = 0;
    while out.len() < end {
        let header = uleb(data, &mut p)?;
        let left = end - out.len();
        if header & 1 == 1 {
            let groups = usize::try_from(header >> 1).map_err(|_| "run too long".to_owned())?;
            let count = groups.saturating_mul(8).min(left);
            let nbytes = groups.saturating_mul(w as usize);
            let run = data.get(p..).unwrap_or_default();
            if (count * w as usize).div_ceil(8) > run.len() {
                return Err("page ends inside a bit-packed run".into());
            }
            out.extend((0..count).map(|k| bits(run, k * w as usize, w) as u32));
            p = p.saturating_add(nbytes).min(data.len());
        } else {
            let count = usize::try_from(header >> 1).map_err(|_| "run too long".to_owned())?;
            if count == 0 {
                return Err("empty RLE run".into());
            }
            let vb = (w as usize).div_ceil(8);
            let raw = data
                .get(p..p + vb)
                .ok_or_else(|| "page ends inside an RLE run".to_owned())?;
            let v = raw
                .iter()
                .rev()
                .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            p += vb;
            out.extend(std::iter::repeat_n(v, count.min(left)));
        }
    }
    Ok(())
}

/// Decodes `n` integers of the DELTA_BINARY_PACKED encoding.
fn delta_binary_packed(data: &[u8], n: usize, out: &mut Vec<i64>) -> Result<(), String> {
    let zigzag = |v: u64| (v >> 1) as i64 ^ -((v & 1) as i64);
    let mut p = 0;
    let block = uleb(data, &mut p)? as usize;
    let minis = uleb(data, &mut p)? as usize;
    let total = uleb(data, &mut p)? as usize;
    let mut last = zigzag(uleb(data, &mut p)?);
    if block == 0
        || block > 1 << 20
        || minis == 0
        || !block.is_multiple_of(minis)
        || !(block / minis).is_multiple_of(32)
    {
        return Err(format!(
            "malformed DELTA_BINARY_PACKED header: block size {block}, {minis} miniblocks"
        ));
    }
    if total < n {
        return Err(format!(
            "DELTA_BINARY_PACKED page holds {total} values, expected {n}"
        ));
    }
    let per_mini = block / minis;
    let end = out.len() + n;
    if n > 0 {
        out.push(last);
    }
    while out.len() < end {
        let min_delta = zigzag(uleb(data, &mut p)?);
        let widths = data
            .get(p..p + minis)
            .ok_or_else(|| "page ends inside a DELTA_BINARY_PACKED block".to_owned())?
            .to_vec();
        p += minis;
        for &w in &widths {
            if out.len() >= end {
                break;
            }
            let w = u32::from(w);
            if w > 64 {
                return Err(format!("bit width {w} is more than 64"));
            }
            let bytes = per_mini * w as usize / 8; // block <= 2^20, w <= 64: no overflow
            let mini = data.get(p..).unwrap_or_default();
            let count = per_mini.min(end - out.len());
            if (count * w as usize).div_ceil(8) > mini.len() {
                return Err("page ends inside a DELTA_BINARY_PACKED miniblock".into());
            }
            for k in 0..count {
                let d = bits(mini, k * w as usize, w) as i64;
                last = last.wrapping_add(min_delta).wrapping_add(d);
                out.push(last);
            }
            p = p.saturating_add(bytes).min(data.len());
        }
    }
    Ok(())
}

/// Decompresses a page to exactly `size` bytes.
fn decompress(codec: i64, input: &[u8], size: usize) -> Result<Vec<u8>, String> {
    let out = match codec {
        0 => input.to_vec(),
        1 => {
            let len = snap::raw::decompress_len(input).map_err(|e| format!("snappy: {e}"))?;
            if len != size {
                return Err(format!(
                    "snappy page decompresses to {len} bytes, its header says {size}"
                ));
            }
            snap::raw::Decoder::new()
                .decompress_vec(input)
                .map_err(|e| format!("snappy: {e}"))?
        }
        2 => {
            let mut out = Vec::with_capacity(size);
            MultiGzDecoder::new(input)
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip: {e}"))?;
            out
        }
        6 => {
            let mut out = vec![0u8; size];
            let n = ruzstd::decoding::FrameDecoder::new()
                .decode_all(input, &mut out)
                .map_err(|e| format!("zstd: {e}"))?;
            out.truncate(n);
            out
        }
        _ => {
            let name = match codec {
                3 => "LZO",
                4 => "BROTLI",
                5 => "LZ4",
                7 => "LZ4_RAW",
                _ => "unknown",
            };
            return Err(format!(
                "compression {name} (codec {codec}) is not supported; expected uncompressed, SNAPPY, GZIP or ZSTD"
            ));
        }
    };
    if out.len() != size {
        return Err(format!(
            "page decompresses to {} bytes, its header says {size}",
            out.len()
        ));
    }
    Ok(out)
}

/// Reads the values of one column chunk: `rows` non-null values.
pub(super) fn read_chunk(
    file: &mut File,
    col: &Column,
    chunk: &Chunk,
    rows: usize,
) -> Result<Phys, ChunkErr> {
    if chunk.num_values != rows as i64 {
        return Err(ChunkErr::Other(format!(
            "the chunk holds {} values, the row group {rows} rows",
            chunk.num_values
        )));
    }
    let mut buf = vec![0u8; chunk.compressed as usize];
    file.seek(SeekFrom::Start(chunk.start))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| ChunkErr::Other(format!("cannot read: {e}")))?;
    let mut out = Phys::new(col.physical).map_err(ChunkErr::Other)?;
    let mut dict: Option<Phys> = None;
    let mut pos = 0;
    let mut levels = Vec::new();
    let mut indices = Vec::new();
    while out.len() < rows {
        if pos >= buf.len() {
            return Err(ChunkErr::Other(format!(
                "the chunk ends after {} of {rows} values",
                out.len()
            )));
        }
        let mut dec = Decoder::new(&buf[pos..]);
        let header = dec
            .read_struct()
            .map_err(|e| ChunkErr::Other(format!("malformed page header: {e}")))?;
        pos += dec.position();
        let page_type = header.int(1).unwrap_or(-1);
        let usize_of = |v: Option<i64>, what: &str| -> Result<usize, ChunkErr> {
            size(v, what)
                .ok()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| ChunkErr::Other(format!("page header: missing or negative {what}")))
        };
        let compressed = usize_of(header.int(3), "compressed size")?;
        let uncompressed = usize_of(header.int(2), "uncompressed size")?;
        if uncompressed as u64 > chunk.uncompressed {
            return Err(ChunkErr::Other(format!(
                "a page claims {uncompressed} bytes, more than the chunk's {}",
                chunk.uncompressed
            )));
        }
        let payload = buf
            .get(pos..pos + compressed)
            .ok_or_else(|| ChunkErr::Other("a page runs past the end of its chunk".into()))?;
        pos += compressed;
        let first = out.len();
        match page_type {
            2 => {
                let h = header
                    .strukt(7)
                    .ok_or_else(|| ChunkErr::Other("dictionary page without its header".into()))?;
                let n = usize_of(h.int(1), "dictionary size")?;
                let data =
                    decompress(chunk.codec, payload, uncompressed).map_err(ChunkErr::Other)?;
                let mut d = Phys::new(col.physical).map_err(ChunkErr::Other)?;
                d.extend_plain(&data, n).map_err(ChunkErr::Other)?;
                dict = Some(d);
            }
            0 | 3 => {
                let (n, encoding, values) = if page_type == 0 {
                    let h = header
                        .strukt(5)
                        .ok_or_else(|| ChunkErr::Other("data page without its header".into()))?;
                    let n = usize_of(h.int(1), "value count")?;
                    let data =
                        decompress(chunk.codec, payload, uncompressed).map_err(ChunkErr::Other)?;
                    let mut p = 0;
                    if col.optional {
                        let len = data
                            .get(..4)
                            .map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize)
                            .ok_or_else(|| ChunkErr::Other("page ends before its levels".into()))?;
                        let lv = data
                            .get(4..4 + len)
                            .ok_or_else(|| ChunkErr::Other("page ends inside its levels".into()))?;
                        levels.clear();
                        rle_hybrid(lv, 1, n, &mut levels).map_err(ChunkErr::Other)?;
                        if let Some(k) = levels.iter().position(|&l| l == 0) {
                            return Err(ChunkErr::Null(first + k));
                        }
                        p = 4 + len;
                    }
                    (n, h.int(2).unwrap_or(0), data[p..].to_vec())
                } else {
                    let h = header
                        .strukt(8)
                        .ok_or_else(|| ChunkErr::Other("data page v2 without its header".into()))?;
                    let n = usize_of(h.int(1), "value count")?;
                    let rep_len = usize_of(h.int(6), "repetition levels length")?;
                    let def_len = usize_of(h.int(5), "definition levels length")?;
                    let skip = rep_len.saturating_add(def_len);
                    if skip > payload.len() || skip > uncompressed {
                        return Err(ChunkErr::Other("levels longer than their page".into()));
                    }
                    if col.optional && h.int(2).unwrap_or(0) > 0 {
                        levels.clear();
                        rle_hybrid(&payload[rep_len..skip], 1, n, &mut levels)
                            .map_err(ChunkErr::Other)?;
                        let k = levels.iter().position(|&l| l == 0).unwrap_or(0);
                        return Err(ChunkErr::Null(first + k));
                    }
                    let rest = &payload[skip..];
                    let values = if h.bool(7).unwrap_or(true) {
                        decompress(chunk.codec, rest, uncompressed - skip)
                            .map_err(ChunkErr::Other)?
                    } else {
                        rest.to_vec()
                    };
                    (n, h.int(4).unwrap_or(0), values)
                };
                if n > rows - first {
                    return Err(ChunkErr::Other(format!(
                        "pages hold more values than the row group's {rows} rows"
                    )));
                }
                match encoding {
                    0 => out.extend_plain(&values, n),
                    2 | 8 => {
                        let d = dict.as_ref().ok_or_else(|| {
                            ChunkErr::Other("dictionary-encoded page without a dictionary".into())
                        })?;
                        let w = u32::from(*values.first().unwrap_or(&0));
                        indices.clear();
                        rle_hybrid(values.get(1..).unwrap_or_default(), w, n, &mut indices)
                            .and_then(|()| out.extend_from_dict(d, &indices))
                    }
                    5 => out.extend_delta(&values, n),
                    9 => out.extend_split(&values, n),
                    e => Err(format!(
                        "encoding {} is not supported; expected PLAIN, dictionary, DELTA_BINARY_PACKED or BYTE_STREAM_SPLIT",
                        encoding_name(e)
                    )),
                }
                .map_err(ChunkErr::Other)?;
            }
            _ => {} // index pages and unknown pages carry no values
        }
    }
    Ok(out)
}

fn encoding_name(e: i64) -> String {
    match e {
        3 => "RLE".into(),
        4 => "BIT_PACKED".into(),
        6 => "DELTA_LENGTH_BYTE_ARRAY".into(),
        7 => "DELTA_BYTE_ARRAY".into(),
        _ => format!("#{e}"),
    }
}

/// Why a chunk could not be read.
#[derive(Debug)]
pub(super) enum ChunkErr {
    /// A null at this row of the row group.
    Null(usize),
    /// Anything else, as a message.
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_hybrid_decoding() {
        // Width 3: an RLE run of 5 threes, then one bit-packed group of the 8 values 0..7.
        let mut out = Vec::new();
        rle_hybrid(&[0x0a, 0x03, 0x03, 0x88, 0xc6, 0xfa], 3, 13, &mut out).unwrap();
        assert_eq!(out, [3, 3, 3, 3, 3, 0, 1, 2, 3, 4, 5, 6, 7]);
        let err = rle_hybrid(&[0x00], 1, 1, &mut Vec::new()).unwrap_err();
        assert!(err.contains("empty RLE run"), "{err}");
        let err = rle_hybrid(&[0x03], 8, 8, &mut Vec::new()).unwrap_err();
        assert!(err.contains("ends inside a bit-packed run"), "{err}");
    }
}
