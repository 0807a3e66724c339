//! The stream table: for every stream, the `(h, c)` of every layer after its last request, its
//! last prediction (where a forecast starts) and last input row (whose past covariates a
//! forecast holds), the steps it has seen and when it was last used.
//! Saved to and restored from `--state-dir/streams.safetensors` (written atomically).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use model::config::ModelConfig;

use crate::error::CoordError;

/// File name of the saved table.
pub(crate) const STATE_FILE: &str = "streams.safetensors";
/// Value of the `format` metadata key.
const FORMAT: &str = "carry-streams-v1";
/// Longest stream id accepted.
pub(crate) const MAX_ID: usize = 256;

/// One stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stream {
    /// `h` of every layer, `[layers, hidden]`.
    pub(crate) h: Vec<f32>,
    /// `c` of every layer, `[layers, hidden]`.
    pub(crate) c: Vec<f32>,
    /// The prediction of its last step, `[F_out]`.
    pub(crate) last_y: Option<Vec<f32>>,
    /// The inputs of its last step, `[F]`.
    pub(crate) last_x: Option<Vec<f32>>,
    /// Steps seen.
    pub(crate) steps: u64,
    /// Last request.
    pub(crate) used: Instant,
}

/// The table.
#[derive(Debug)]
pub(crate) struct Table {
    streams: HashMap<String, Stream>,
    max: usize,
}

impl Table {
    /// An empty table of at most `max` streams.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            streams: HashMap::new(),
            max,
        }
    }

    /// Streams held.
    pub(crate) fn len(&self) -> usize {
        self.streams.len()
    }

    /// A stream, if known.
    pub(crate) fn get(&self, id: &str) -> Option<&Stream> {
        self.streams.get(id)
    }

    /// Whether another new stream fits.
    pub(crate) fn has_room(&self) -> bool {
        self.streams.len() < self.max
    }

    /// Stores a stream.
    pub(crate) fn put(&mut self, id: &str, s: Stream) {
        self.streams.insert(id.to_string(), s);
    }

    /// Forgets a stream; whether it was known.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        self.streams.remove(id).is_some()
    }

    /// Forgets streams idle for `ttl` or longer; returns how many.
    pub(crate) fn evict(&mut self, now: Instant, ttl: Duration) -> usize {
        let before = self.streams.len();
        self.streams
            .retain(|_, s| now.saturating_duration_since(s.used) < ttl);
        before - self.streams.len()
    }

    /// Writes the table to `dir` atomically.
    pub(crate) fn save(&self, dir: &Path, cfg: &ModelConfig) -> Result<usize, CoordError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CoordError::io(format!("creating {}", dir.display()), e))?;
        let (l, hd, fo, fi) = (cfg.layers, cfg.hidden, cfg.output, cfg.input);
        let n = self.streams.len();
        let mut ids: Vec<&String> = self.streams.keys().collect();
        ids.sort();
        let (mut h, mut c, mut y, mut x) = (
            Vec::with_capacity(n * l * hd),
            Vec::with_capacity(n * l * hd),
            Vec::with_capacity(n * fo),
            Vec::with_capacity(n * fi),
        );
        let now = Instant::now();
        let mut meta_rows = Vec::with_capacity(n);
        for id in &ids {
            let s = &self.streams[*id];
            h.extend_from_slice(&s.h);
            c.extend_from_slice(&s.c);
            match &s.last_y {
                Some(v) => y.extend_from_slice(v),
                None => y.extend(std::iter::repeat_n(0.0, fo)),
            }
            match &s.last_x {
                Some(v) => x.extend_from_slice(v),
                None => x.extend(std::iter::repeat_n(0.0, fi)),
            }
            meta_rows.push(serde_json::json!({
                "id": id,
                "steps": s.steps,
                "idle_ms": now.saturating_duration_since(s.used).as_millis() as u64,
                "has_y": s.last_y.is_some(),
                "has_x": s.last_x.is_some(),
            }));
        }
        let mut meta = HashMap::new();
        meta.insert("format".into(), FORMAT.into());
        meta.insert(
            "model".into(),
            serde_json::json!({"layers": l, "hidden": hd, "output": fo}).to_string(),
        );
        meta.insert(
            "streams".into(),
            serde_json::Value::Array(meta_rows).to_string(),
        );
        model::st::write(
            &dir.join(STATE_FILE),
            &[
                ("h", vec![n, l, hd], &h),
                ("c", vec![n, l, hd], &c),
                ("y", vec![n, fo], &y),
                ("x", vec![n, fi], &x),
            ],
            meta,
        )?;
        Ok(n)
    }

    /// Reads the table saved in `dir` (an empty one if there is none); refused when it was saved
    /// for a model of another shape.
    pub(crate) fn restore(dir: &Path, cfg: &ModelConfig, max: usize) -> Result<Self, CoordError> {
        let path = dir.join(STATE_FILE);
        let mut table = Self::new(max);
        if !path.is_file() {
            return Ok(table);
        }
        let bad = |msg: String| CoordError::Config {
            field: "state_dir".into(),
            msg: format!("{}: {msg}", path.display()),
        };
        let (mut tensors, meta) = model::st::read(&path)?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!("expected a saved stream table ({FORMAT})")));
        }
        let shape: serde_json::Value = serde_json::from_str(meta.get("model").map_or("", |s| s))
            .map_err(|e| bad(format!("metadata `model`: {e}")))?;
        let (l, hd, fo) = (cfg.layers, cfg.hidden, cfg.output);
        let want = serde_json::json!({"layers": l, "hidden": hd, "output": fo});
        if shape != want {
            return Err(bad(format!(
                "the streams were saved for a model with {shape}, this model has {want}; remove the file to start afresh"
            )));
        }
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(meta.get("streams").map_or("[]", |s| s))
                .map_err(|e| bad(format!("metadata `streams`: {e}")))?;
        let n = rows.len();
        let has_x = tensors.contains_key("x");
        let mut take = |k: &str, shape: &[usize]| {
            let (s, v) = tensors
                .remove(k)
                .ok_or_else(|| bad(format!("missing tensor `{k}`")))?;
            if s != shape {
                return Err(CoordError::Model(model::ModelError::shape(
                    format!("{}: {k}", path.display()),
                    shape,
                    &s,
                )));
            }
            model::error::check_finite(k, &v)?;
            Ok(v)
        };
        let h = take("h", &[n, l, hd])?;
        let c = take("c", &[n, l, hd])?;
        let y = take("y", &[n, fo])?;
        // tables saved before the last inputs were kept have none
        let fi = cfg.input;
        let x = if has_x {
            Some(take("x", &[n, fi])?)
        } else {
            None
        };
        let now = Instant::now();
        for (i, r) in rows.iter().enumerate() {
            let id = r["id"]
                .as_str()
                .ok_or_else(|| bad(format!("stream {i} has no id")))?;
            let idle = Duration::from_millis(r["idle_ms"].as_u64().unwrap_or(0));
            let s = l * hd;
            table.put(
                id,
                Stream {
                    h: h[i * s..(i + 1) * s].to_vec(),
                    c: c[i * s..(i + 1) * s].to_vec(),
                    last_y: r["has_y"]
                        .as_bool()
                        .unwrap_or(false)
                        .then(|| y[i * fo..(i + 1) * fo].to_vec()),
                    last_x: x
                        .as_ref()
                        .filter(|_| r["has_x"].as_bool().unwrap_or(false))
                        .map(|x| x[i * fi..(i + 1) * fi].to_vec()),
                    steps: r["steps"].as_u64().unwrap_or(0),
                    used: now.checked_sub(idle).unwrap_or(now),
                },
            );
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_saves_restores_and_evicts() {
        let cfg = ModelConfig::seed();
        let dir = std::env::temp_dir().join(format!("carry-streams-{}", std::process::id()));
        let mut t = Table::new(3);
        let now = Instant::now();
        for (i, id) in ["a", "b,with comma"].iter().enumerate() {
            t.put(
                id,
                Stream {
                    h: vec![i as f32; 16],
                    c: vec![-(i as f32); 16],
                    last_y: (i == 1).then(|| vec![0.5, 0.25]),
                    last_x: (i == 1).then(|| vec![0.75, -0.5]),
                    steps: 7 + i as u64,
                    used: now,
                },
            );
        }
        assert_eq!(t.save(&dir, &cfg).unwrap(), 2);
        let r = Table::restore(&dir, &cfg, 3).unwrap();
        assert_eq!(r.len(), 2);
        let b = r.get("b,with comma").unwrap();
        assert_eq!((b.h[0], b.c[0], b.steps), (1.0, -1.0, 8));
        assert_eq!(b.last_y.as_deref(), Some(&[0.5, 0.25][..]));
        assert_eq!(b.last_x.as_deref(), Some(&[0.75, -0.5][..]));
        assert_eq!(r.get("a").unwrap().last_y, None);
        assert_eq!(r.get("a").unwrap().last_x, None);
        let other = ModelConfig {
            hidden: 16,
            ..cfg.clone()
        };
        let e = Table::restore(&dir, &other, 3).unwrap_err().to_string();
        assert!(e.contains("saved for a model"), "{e}");
        assert_eq!(
            t.evict(now + Duration::from_secs(5), Duration::from_secs(1)),
            2
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
