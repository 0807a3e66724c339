//! Tensors too large for one gRPC message. Before a message is sent, [`offload`] moves the data of
//! its largest tensors out (leaving the shape and a blob id) until the message fits; the bytes
//! then travel in [`chunks`] through `ReadBlob` (coordinator to worker) or `WriteBlob` (worker to
//! coordinator), and [`Assembler`] puts them back together with a bound on their size.

use prost::Message;
use prost::bytes::{Bytes, BytesMut};

use crate::pb;

/// Room left in a message for everything but tensor data (ids, shapes, numbers, framing).
pub const MESSAGE_MARGIN: usize = 64 << 10;

/// Bytes per blob chunk: well under any message limit (the smallest accepted is 1 MiB).
pub const CHUNK_BYTES: usize = 256 << 10;

/// Moves the data of the largest tensors among `tensors` into blobs, handing each one's bytes to
/// `store` (which returns its id), until `message` (whose tensors they are) encodes within
/// `limit` bytes. Returns how many tensors were moved.
pub fn offload<M: Message>(
    message: &mut M,
    limit: usize,
    tensors: impl Fn(&mut M) -> Vec<&mut pb::Tensor>,
    mut store: impl FnMut(Bytes) -> String,
) -> usize {
    let budget = limit.saturating_sub(MESSAGE_MARGIN);
    let mut moved = 0;
    while message.encoded_len() > budget {
        let mut ts = tensors(message);
        let Some(largest) = ts
            .iter_mut()
            .filter(|t| t.blob.is_empty() && !t.data.is_empty())
            .max_by_key(|t| t.data.len())
        else {
            break;
        };
        let data = std::mem::take(&mut largest.data);
        largest.blob = store(data);
        moved += 1;
    }
    moved
}

/// Moves the data of `t` into a blob (handing it to `store`) when it is larger than `max` bytes.
pub fn move_out(t: &mut pb::Tensor, max: usize, store: impl FnOnce(Bytes) -> String) {
    if t.blob.is_empty() && t.data.len() > max {
        t.blob = store(std::mem::take(&mut t.data));
    }
}

/// The tensors of a message that [`offload`] may move out: every one of them, in a fixed order.
pub type Tensors<M> = fn(&mut M) -> Vec<&mut pb::Tensor>;

/// The tensors of a step's work.
pub fn assignment_tensors(a: &mut pb::Assignment) -> Vec<&mut pb::Tensor> {
    [
        a.x.as_mut(),
        a.y.as_mut(),
        a.cond.as_mut(),
        a.observed.as_mut(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The tensors of a view.
pub fn view_tensors(v: &mut pb::View) -> Vec<&mut pb::Tensor> {
    [
        v.params.as_mut(),
        v.adam_m.as_mut(),
        v.adam_v.as_mut(),
        v.h.as_mut(),
        v.c.as_mut(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The tensors of a report, record after record.
pub fn report_tensors(r: &mut pb::ReportRequest) -> Vec<&mut pb::Tensor> {
    use pb::record::Kind;
    let mut out = Vec::new();
    for rec in &mut r.records {
        match rec.kind.as_mut() {
            Some(Kind::Computed(c)) => {
                out.extend([c.h.as_mut(), c.c.as_mut()].into_iter().flatten())
            }
            Some(Kind::Reduced(d)) => out.extend(d.chunks.iter_mut()),
            Some(Kind::Gradient(g)) => out.extend(g.grad.as_mut()),
            _ => {}
        }
    }
    out
}

/// A blob a message refers to, still to be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Which of the message's tensors (in the order of its [`Tensors`] function).
    pub index: usize,
    /// The blob's id.
    pub id: String,
    /// Bytes its shape needs.
    pub bytes: usize,
}

/// The blobs `m` refers to; an error when a shape's size does not fit in memory addresses.
pub fn pending<M>(m: &mut M, tensors: Tensors<M>) -> Result<Vec<Pending>, String> {
    let mut out = Vec::new();
    for (index, t) in tensors(m).into_iter().enumerate() {
        if t.blob.is_empty() {
            continue;
        }
        let bytes = t
            .shape
            .iter()
            .try_fold(4u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("blob `{}`: shape {:?} is too large", t.blob, t.shape))?;
        out.push(Pending {
            index,
            id: t.blob.clone(),
            bytes,
        });
    }
    Ok(out)
}

/// Puts the fetched bytes of `p` into `m`.
pub fn fill<M>(m: &mut M, tensors: Tensors<M>, p: &Pending, data: Bytes) {
    if let Some(t) = tensors(m).into_iter().nth(p.index) {
        t.data = data;
        t.blob.clear();
    }
}

/// Moves the largest tensors of `m` out until it fits in `limit` bytes; returns their bytes, to
/// upload in order and name with [`name_uploads`].
pub fn split<M: Message>(m: &mut M, limit: usize, tensors: Tensors<M>) -> Vec<Bytes> {
    let mut out = Vec::new();
    offload(m, limit, tensors, |data| {
        out.push(data);
        format!("{PENDING}{}", out.len() - 1)
    });
    out
}

/// Placeholder of an upload not yet named by the coordinator.
const PENDING: &str = "pending-";

/// Replaces the placeholders [`split`] left in `m` by the ids the uploads got.
pub fn name_uploads<M>(m: &mut M, tensors: Tensors<M>, ids: &[String]) {
    for t in tensors(m) {
        if let Some(id) = t
            .blob
            .strip_prefix(PENDING)
            .and_then(|k| k.parse::<usize>().ok())
            .and_then(|k| ids.get(k))
        {
            t.blob.clone_from(id);
        }
    }
}

/// Replaces the blob references of `m` by the uploaded bytes `take` returns for each id.
pub fn resolve<M>(
    m: &mut M,
    tensors: Tensors<M>,
    mut take: impl FnMut(&str) -> Option<Bytes>,
) -> Result<(), String> {
    for t in tensors(m) {
        if t.blob.is_empty() {
            continue;
        }
        t.data = take(&t.blob)
            .ok_or_else(|| format!("blob `{}` was not uploaded by this worker", t.blob))?;
        t.blob.clear();
    }
    Ok(())
}

/// The id the coordinator gave an upload.
pub fn uploaded(r: pb::WriteBlobReply) -> String {
    r.blob
}

/// The reply to an upload: its id.
pub fn upload_reply(id: String) -> pb::WriteBlobReply {
    pb::WriteBlobReply { blob: id }
}

/// `data` cut into chunks of at most `size` bytes (no copies).
pub fn chunks(data: &Bytes, size: usize) -> Vec<Bytes> {
    let size = size.max(1);
    (0..data.len())
        .step_by(size)
        .map(|i| data.slice(i..(i + size).min(data.len())))
        .collect()
}

/// The chunks of one upload (`WriteBlob`) by worker `id`: the id rides on the first.
pub fn upload(id: &str, data: &Bytes) -> Vec<pb::BlobChunk> {
    chunks(data, CHUNK_BYTES)
        .into_iter()
        .enumerate()
        .map(|(i, data)| pb::BlobChunk {
            worker_id: if i == 0 {
                id.to_string()
            } else {
                String::new()
            },
            data,
        })
        .collect()
}

/// The chunks of one download (`ReadBlob`).
pub fn download(data: &Bytes) -> Vec<pb::BlobChunk> {
    upload("", data)
}

/// A request for blob `blob` by worker `id`.
pub fn read_request(id: &str, blob: &str) -> pb::ReadBlobRequest {
    pb::ReadBlobRequest {
        worker_id: id.to_string(),
        blob: blob.to_string(),
    }
}

/// Collects the chunks of one blob, refusing to grow past a bound.
#[derive(Debug)]
pub struct Assembler {
    buf: BytesMut,
    max: usize,
}

impl Assembler {
    /// An empty blob of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends a chunk; an error when the blob would exceed its bound.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), String> {
        if self.buf.len() + chunk.len() > self.max {
            return Err(format!(
                "expected at most {} bytes, got more than {}",
                self.max,
                self.buf.len() + chunk.len() - 1
            ));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing has arrived.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The whole blob.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::tensor;

    #[test]
    fn the_largest_tensors_move_out_until_the_message_fits() {
        let mut v = pb::View {
            params: Some(tensor(&[300_000], &vec![1.0; 300_000])),
            h: Some(tensor(&[2, 10, 8], &[0.5; 160])),
            c: Some(tensor(&[2, 10, 8], &[0.5; 160])),
            ..Default::default()
        };
        let mut stored = Vec::new();
        let moved = offload(&mut v, 1 << 20, view_tensors, |b| {
            stored.push(b);
            format!("blob-{}", stored.len())
        });
        assert_eq!(moved, 1);
        assert!(v.encoded_len() <= 1 << 20);
        let g = v.params.as_ref().unwrap();
        assert_eq!((g.blob.as_str(), g.data.len()), ("blob-1", 0));
        assert_eq!(stored[0].len(), 1_200_000);
        assert!(
            v.h.as_ref().unwrap().blob.is_empty(),
            "small tensors stay inline"
        );
        let p = pending(&mut v, view_tensors).unwrap();
        assert_eq!(p.len(), 1);
        fill(&mut v, view_tensors, &p[0], stored[0].clone());
        assert!(v.params.as_ref().unwrap().blob.is_empty());
        // chunks put back together give the same bytes
        let mut a = Assembler::new(1_200_000);
        for c in chunks(&stored[0], CHUNK_BYTES) {
            assert!(c.len() <= CHUNK_BYTES);
            a.push(&c).unwrap();
        }
        assert_eq!(a.finish(), stored[0]);
        let mut small = Assembler::new(3);
        assert!(small.push(b"abcd").unwrap_err().contains("at most 3"));
    }
}
