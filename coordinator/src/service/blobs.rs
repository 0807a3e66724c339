//! Tensors that travel outside their message (see `proto::blob`): the coordinator's outgoing
//! ones, kept until their step is committed, and the workers' uploads, kept until the result that
//! names them is handed in. Uploads are bounded per worker; every blob is readable only by the
//! worker it was made for (the step's parameters by any member).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::bytes::Bytes;

/// Uploads older than this are dropped (their result never came).
const UPLOAD_TTL: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Blob {
    /// The worker id it belongs to; `None`: any member (the step's parameters).
    owner: Option<String>,
    data: Bytes,
    /// The step of an outgoing blob; `None` for uploads.
    step: Option<u64>,
    created: Instant,
}

/// The blob store.
#[derive(Debug, Default)]
pub(crate) struct Blobs {
    inner: Mutex<HashMap<String, Blob>>,
}

impl Blobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Blob>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps an outgoing tensor of `step` for `owner` (`None`: any member); returns its id.
    pub(crate) fn put_outgoing(&self, owner: Option<&str>, step: u64, data: Bytes) -> String {
        let id = proto::security::random_id();
        self.lock().insert(
            id.clone(),
            Blob {
                owner: owner.map(str::to_string),
                data,
                step: Some(step),
                created: Instant::now(),
            },
        );
        id
    }

    /// The bytes of blob `id` for worker `who`, if it may read them.
    pub(crate) fn read(&self, who: &str, id: &str) -> Option<Bytes> {
        let map = self.lock();
        let b = map.get(id)?;
        match &b.owner {
            Some(o) if o != who => None,
            _ => Some(b.data.clone()),
        }
    }

    /// Bytes of uploads `who` holds now.
    pub(crate) fn uploaded_by(&self, who: &str) -> usize {
        self.lock()
            .values()
            .filter(|b| b.step.is_none() && b.owner.as_deref() == Some(who))
            .map(|b| b.data.len())
            .sum()
    }

    /// Keeps an upload of worker `who`; returns its id.
    pub(crate) fn put_upload(&self, who: &str, data: Bytes) -> String {
        let id = proto::security::random_id();
        self.lock().insert(
            id.clone(),
            Blob {
                owner: Some(who.to_string()),
                data,
                step: None,
                created: Instant::now(),
            },
        );
        id
    }

    /// Takes upload `id` of worker `who` (it is used once).
    pub(crate) fn take_upload(&self, who: &str, id: &str) -> Option<Bytes> {
        let mut map = self.lock();
        match map.get(id) {
            Some(b) if b.step.is_none() && b.owner.as_deref() == Some(who) => {
                map.remove(id).map(|b| b.data)
            }
            _ => None,
        }
    }

    /// Drops outgoing blobs of steps before `step`, and uploads left too long.
    pub(crate) fn collect(&self, step: u64) {
        let now = Instant::now();
        self.lock().retain(|_, b| match b.step {
            Some(s) => s >= step,
            None => now.saturating_duration_since(b.created) < UPLOAD_TTL,
        });
    }

    /// Drops every upload of worker `who` (it left or was evicted).
    pub(crate) fn forget(&self, who: &str) {
        self.lock()
            .retain(|_, b| !(b.step.is_none() && b.owner.as_deref() == Some(who)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_read_only_by_their_owner_and_collected_by_step() {
        let b = Blobs::default();
        let shared = b.put_outgoing(None, 3, Bytes::from_static(b"params"));
        let mine = b.put_outgoing(Some("w1"), 3, Bytes::from_static(b"x"));
        assert_eq!(b.read("w2", &shared).as_deref(), Some(&b"params"[..]));
        assert_eq!(b.read("w2", &mine), None);
        assert_eq!(b.read("w1", &mine).as_deref(), Some(&b"x"[..]));
        let up = b.put_upload("w1", Bytes::from_static(b"grad"));
        assert_eq!(b.uploaded_by("w1"), 4);
        assert_eq!(
            b.take_upload("w2", &up),
            None,
            "only its uploader hands it in"
        );
        assert_eq!(b.take_upload("w1", &up).as_deref(), Some(&b"grad"[..]));
        assert_eq!(b.take_upload("w1", &up), None, "used once");
        b.collect(4);
        assert_eq!(b.read("w1", &mine), None);
        let up2 = b.put_upload("w1", Bytes::from_static(b"g"));
        b.forget("w1");
        assert_eq!(b.take_upload("w1", &up2), None);
    }
}
