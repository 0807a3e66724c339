//! Configuration of `coordinator train`: flags, environment variables (`CARRY_*`), a TOML file
//! (`--config`), defaults, in that order of precedence; parsed into a plain [`TrainConfig`] whose
//! `validate` errors name the field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use model::config::{AdamConfig, Head, ModelConfig, ResetPolicy, TrainSpec, ValState};
use model::device::DeviceChoice;
use model::engine::EngineKind;
use serde::Deserialize;

use crate::error::CoordError;

/// Options of `coordinator train`, each from a flag, an environment variable or the TOML file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainArgs {
    /// TOML file with any of these options (keys as flag names with `_`).
    #[arg(long, env = "CARRY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the resolved configuration and exit.
    #[arg(long, env = "CARRY_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip)]
    pub dry_run: Option<bool>,

    /// `synthetic` (built-in trajectories) or an .npz file with x, y [, x_val, y_val, cond, cond_val].
    #[arg(long, env = "CARRY_DATA")]
    pub data: Option<String>,
    /// Synthetic training sequences [default: 2000].
    #[arg(long, env = "CARRY_SEQUENCES")]
    pub sequences: Option<usize>,
    /// Synthetic validation sequences [default: 400].
    #[arg(long, env = "CARRY_VAL_SEQUENCES")]
    pub val_sequences: Option<usize>,
    /// Time steps per sequence for flat data and synthetic data [default: 96].
    #[arg(long, env = "CARRY_TIMESTEPS")]
    pub timesteps: Option<usize>,
    /// Input features per step for flat data [default: 2].
    #[arg(long, env = "CARRY_FEATURES")]
    pub features: Option<usize>,

    /// Epochs [default: 10].
    #[arg(long, env = "CARRY_EPOCHS")]
    pub epochs: Option<u64>,
    /// Stop after this many steps in total (default: all epochs).
    #[arg(long, env = "CARRY_STEPS")]
    pub steps: Option<u64>,
    /// Global batch size B: parallel streams [default: 10].
    #[arg(long, env = "CARRY_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// LSTM units per layer [default: 8].
    #[arg(long, env = "CARRY_HIDDEN")]
    pub hidden: Option<usize>,
    /// Stacked LSTM layers [default: 2].
    #[arg(long, env = "CARRY_LAYERS")]
    pub layers: Option<usize>,
    /// Dropout on the last LSTM layer's outputs [default: 0.2].
    #[arg(long, env = "CARRY_DROPOUT")]
    pub dropout: Option<f32>,
    /// Head activation: linear or softmax [default: linear].
    #[arg(long, env = "CARRY_HEAD")]
    pub head: Option<String>,
    /// Adam learning rate [default: 0.001].
    #[arg(long, env = "CARRY_LR")]
    pub lr: Option<f64>,
    /// Adam beta1 [default: 0.9].
    #[arg(long, env = "CARRY_BETA1")]
    pub beta1: Option<f64>,
    /// Adam beta2 [default: 0.999].
    #[arg(long, env = "CARRY_BETA2")]
    pub beta2: Option<f64>,
    /// Adam epsilon [default: 1e-7].
    #[arg(long, env = "CARRY_EPSILON")]
    pub epsilon: Option<f64>,
    /// Seed for initialization, dropout masks and synthetic data [default: 42].
    #[arg(long, env = "CARRY_SEED")]
    pub seed: Option<u64>,
    /// State resets: never, epoch or every:K [default: epoch].
    #[arg(long, env = "CARRY_RESET_STATES")]
    pub reset_states: Option<String>,
    /// Validation start state: carry (final training state) or zero [default: carry].
    #[arg(long, env = "CARRY_VAL_STATE")]
    pub val_state: Option<String>,
    /// Learn a projection from each sequence's `cond` vector to the initial (h, c) at resets.
    #[arg(long, env = "CARRY_INIT_FROM_COND", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub init_from_cond: Option<bool>,

    /// gRPC address to serve on; port 0 picks a free port [default: 127.0.0.1:50051].
    #[arg(long, env = "CARRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Extra plaintext port serving only the gRPC health service (for kubelet probes).
    #[arg(long, env = "CARRY_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long, env = "CARRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Workers to wait for before the first step [default: spawn-workers, else 1].
    #[arg(long, env = "CARRY_WORKERS")]
    pub workers: Option<usize>,
    /// Launch K local worker processes; 0 trains in this process (the reference trainer).
    #[arg(long, env = "CARRY_SPAWN_WORKERS")]
    pub spawn_workers: Option<usize>,
    /// Extra arguments for spawned workers, e.g. "--device wgpu".
    #[arg(long, env = "CARRY_WORKER_ARGS", allow_hyphen_values = true)]
    pub worker_args: Option<String>,
    /// Run directory: checkpoints, metrics.csv, loss plot [default: runs/latest].
    #[arg(long, env = "CARRY_OUT")]
    pub out: Option<PathBuf>,
    /// Resume from the checkpoint in this run directory (or file).
    #[arg(long, env = "CARRY_RESUME")]
    pub resume: Option<PathBuf>,
    /// Resume from --out when it holds a checkpoint, else start fresh (for restarts under Kubernetes).
    #[arg(long, env = "CARRY_AUTO_RESUME", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub auto_resume: Option<bool>,
    /// Keep serving (health, status) after the job ends, until SIGTERM.
    #[arg(long, env = "CARRY_LINGER", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub linger: Option<bool>,
    /// Checkpoint every K steps (and at the end) [default: 50].
    #[arg(long, env = "CARRY_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<u64>,
    /// Worker lease in milliseconds: a worker silent this long is dead [default: 3000].
    #[arg(long, env = "CARRY_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// Device for in-process training and for spawned workers: auto (a GPU through wgpu if there
    /// is one, else the CPU), wgpu, vulkan, metal, dx12, cpu [default: auto].
    #[arg(long, env = "CARRY_DEVICE")]
    pub device: Option<String>,
    /// Engine: fused or burn [default: fused].
    #[arg(long, env = "CARRY_ENGINE")]
    pub engine: Option<String>,
    /// CPU threads for in-process training (0 = all cores) [default: 0].
    #[arg(long, env = "CARRY_THREADS")]
    pub threads: Option<usize>,
    /// Shared token every worker must present.
    #[arg(long, env = "CARRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the shared token.
    #[arg(long, env = "CARRY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate (PEM).
    #[arg(long, env = "CARRY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CARRY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that worker client certificates must chain to (mutual TLS).
    #[arg(long, env = "CARRY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback listen address without token or TLS.
    #[arg(long, env = "CARRY_INSECURE", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: Option<bool>,
    /// Largest gRPC message accepted, in MiB [default: 64].
    #[arg(long, env = "CARRY_MAX_MESSAGE_MB")]
    pub max_message_mb: Option<usize>,
    /// Progress display: auto (bar on a terminal, log lines otherwise), bar, log, off [default: auto].
    #[arg(long, env = "CARRY_PROGRESS")]
    pub progress: Option<String>,
}

macro_rules! fill_from {
    ($dst:ident, $src:ident; $($f:ident),* $(,)?) => {
        $( if $dst.$f.is_none() { $dst.$f = $src.$f.take(); } )*
    };
}

impl TrainArgs {
    /// Fills every option not given by a flag or environment variable from `file`.
    pub fn fill_from(&mut self, mut file: TrainArgs) {
        fill_from!(self, file; data, sequences, val_sequences, timesteps, features, epochs, steps,
            batch_size, hidden, layers, dropout, head, lr, beta1, beta2, epsilon, seed, reset_states,
            val_state, init_from_cond, listen, health_listen, metrics_listen, workers, spawn_workers,
            worker_args, out, resume, auto_resume, linger, checkpoint_every, lease_ms, device, engine,
            threads, token, token_file, tls_cert, tls_key, tls_client_ca, insecure, max_message_mb,
            progress);
    }

    /// Reads `--config` (if any) and applies precedence: flags > env > TOML > defaults.
    pub fn with_file(mut self) -> Result<Self, CoordError> {
        if let Some(path) = self.config.clone() {
            let text = std::fs::read_to_string(&path).map_err(|e| CoordError::Config {
                field: "config".into(),
                msg: format!("{}: {e}", path.display()),
            })?;
            let file: TrainArgs = toml::from_str(&text).map_err(|e| CoordError::Config {
                field: "config".into(),
                msg: format!("{}: {}", path.display(), e.to_string().trim()),
            })?;
            self.fill_from(file);
        }
        Ok(self)
    }
}

/// Where training data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The built-in generator.
    Synthetic,
    /// An `.npz` file.
    Npz(PathBuf),
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// Periodic log lines.
    Log,
    /// Nothing beyond the start and end.
    Off,
}

/// TLS files of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA for client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The resolved configuration of a training job.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Data source.
    pub data: DataSource,
    /// Synthetic training sequences.
    pub sequences: usize,
    /// Synthetic validation sequences.
    pub val_sequences: usize,
    /// Time steps (synthetic and flat data).
    pub timesteps: usize,
    /// Input features (flat data).
    pub features: usize,
    /// Model and optimization settings (input/output widths are filled from the data).
    pub spec: TrainSpec,
    /// Whether to learn the initial-state projection from `cond`.
    pub init_from_cond: bool,
    /// gRPC address.
    pub listen: SocketAddr,
    /// Plaintext health-only address.
    pub health_listen: Option<SocketAddr>,
    /// Prometheus address.
    pub metrics_listen: Option<SocketAddr>,
    /// Workers to wait for before the first step.
    pub workers: usize,
    /// Local workers to launch; `Some(0)` trains in-process.
    pub spawn_workers: Option<usize>,
    /// Extra arguments for spawned workers.
    pub worker_args: Vec<String>,
    /// Run directory.
    pub out: PathBuf,
    /// Checkpoint to resume from.
    pub resume: Option<PathBuf>,
    /// Resume from `out` when it holds a checkpoint.
    pub auto_resume: bool,
    /// Keep serving after the job ends.
    pub linger: bool,
    /// Checkpoint cadence in steps.
    pub checkpoint_every: u64,
    /// Worker lease.
    pub lease: Duration,
    /// Device for in-process compute.
    pub device: DeviceChoice,
    /// Engine for in-process compute.
    pub engine: EngineKind,
    /// CPU threads for in-process compute.
    pub threads: usize,
    /// Shared token.
    pub token: Option<proto::security::Token>,
    /// TLS files.
    pub tls: Option<TlsFiles>,
    /// Allow an unprotected non-loopback address.
    pub insecure: bool,
    /// Largest message in bytes.
    pub max_message_bytes: usize,
    /// Progress display.
    pub progress: Progress,
}

fn parse<T: std::str::FromStr<Err = String>>(
    field: &str,
    v: Option<String>,
    default: T,
) -> Result<T, CoordError> {
    match v {
        None => Ok(default),
        Some(s) => s.parse().map_err(|msg| CoordError::Config {
            field: field.into(),
            msg,
        }),
    }
}

impl TrainArgs {
    /// Resolves defaults and validates; errors name the field.
    pub fn resolve(self) -> Result<TrainConfig, CoordError> {
        let bad = |field: &str, msg: String| CoordError::Config {
            field: field.into(),
            msg,
        };
        let data = match self.data.as_deref() {
            None | Some("synthetic") => DataSource::Synthetic,
            Some("") => {
                return Err(bad(
                    "data",
                    "expected `synthetic` or a path to an .npz file, got an empty value".into(),
                ));
            }
            Some(p) => DataSource::Npz(PathBuf::from(p)),
        };
        let head: Head = parse("head", self.head, Head::Linear)?;
        let reset: ResetPolicy = parse("reset_states", self.reset_states, ResetPolicy::Epoch)?;
        let val_state: ValState = parse("val_state", self.val_state, ValState::Carry)?;
        let device: DeviceChoice = parse("device", self.device, DeviceChoice::Auto)?;
        let engine: EngineKind = parse("engine", self.engine, EngineKind::Fused)?;
        let progress = match self.progress.as_deref().unwrap_or("auto") {
            "auto" => Progress::Auto,
            "bar" => Progress::Bar,
            "log" => Progress::Log,
            "off" => Progress::Off,
            other => {
                return Err(bad(
                    "progress",
                    format!("expected auto, bar, log or off, got `{other}`"),
                ));
            }
        };
        let spec = TrainSpec {
            model: ModelConfig {
                input: self.features.unwrap_or(2),
                hidden: self.hidden.unwrap_or(8),
                layers: self.layers.unwrap_or(2),
                output: self.features.unwrap_or(2),
                head,
                dropout: self.dropout.unwrap_or(0.2),
                cond: None,
            },
            adam: AdamConfig {
                lr: self.lr.unwrap_or(1e-3),
                beta1: self.beta1.unwrap_or(0.9),
                beta2: self.beta2.unwrap_or(0.999),
                epsilon: self.epsilon.unwrap_or(1e-7),
            },
            batch_size: self.batch_size.unwrap_or(10),
            epochs: self.epochs.unwrap_or(10),
            max_steps: self.steps,
            seed: self.seed.unwrap_or(42),
            reset,
            val_state,
        };
        let pair = proto::security::cert_and_key(self.tls_cert, self.tls_key)
            .map_err(|(field, msg)| bad(field, msg))?;
        let tls = match pair {
            Some((cert, key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
            }),
            None => {
                if self.tls_client_ca.is_some() {
                    return Err(bad(
                        "tls_client_ca",
                        "mutual TLS needs --tls-cert and --tls-key too".into(),
                    ));
                }
                None
            }
        };
        let token = proto::security::load_token(self.token.as_deref(), self.token_file.as_deref())
            .map_err(|msg| bad("token", msg))?;
        let spawn_workers = self.spawn_workers;
        let cfg = TrainConfig {
            data,
            sequences: self.sequences.unwrap_or(2000),
            val_sequences: self.val_sequences.unwrap_or(400),
            timesteps: self.timesteps.unwrap_or(96),
            features: self.features.unwrap_or(2),
            spec,
            init_from_cond: self.init_from_cond.unwrap_or(false),
            listen: self
                .listen
                .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid address")),
            health_listen: self.health_listen,
            metrics_listen: self.metrics_listen,
            workers: self
                .workers
                .unwrap_or(spawn_workers.filter(|&k| k > 0).unwrap_or(1)),
            spawn_workers,
            worker_args: self
                .worker_args
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            out: self.out.unwrap_or_else(|| PathBuf::from("runs/latest")),
            resume: self.resume,
            auto_resume: self.auto_resume.unwrap_or(false),
            linger: self.linger.unwrap_or(false),
            checkpoint_every: self.checkpoint_every.unwrap_or(50),
            lease: Duration::from_millis(self.lease_ms.unwrap_or(3000)),
            device,
            engine,
            threads: self.threads.unwrap_or(0),
            token,
            tls,
            insecure: self.insecure.unwrap_or(false),
            max_message_bytes: self.max_message_mb.unwrap_or(64).saturating_mul(1 << 20),
            progress,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl TrainConfig {
    /// Checks ranges and combinations; errors name the field.
    pub fn validate(&self) -> Result<(), CoordError> {
        let bad = |field: &str, msg: String| {
            Err(CoordError::Config {
                field: field.into(),
                msg,
            })
        };
        self.spec.validate().map_err(|e| match e {
            model::ModelError::Config { field, msg } => CoordError::Config { field, msg },
            other => CoordError::Config {
                field: "spec".into(),
                msg: other.to_string(),
            },
        })?;
        if self.timesteps == 0 {
            return bad("timesteps", "expected at least 1 time step, got 0".into());
        }
        if self.features == 0 {
            return bad("features", "expected at least 1 feature, got 0".into());
        }
        if self.data == DataSource::Synthetic && self.sequences < self.spec.batch_size {
            return bad(
                "sequences",
                format!(
                    "expected at least batch_size = {} synthetic sequences, got {}",
                    self.spec.batch_size, self.sequences
                ),
            );
        }
        if self.workers == 0 {
            return bad(
                "workers",
                "expected at least 1 worker to wait for, got 0".into(),
            );
        }
        if self.checkpoint_every == 0 {
            return bad(
                "checkpoint_every",
                "expected at least 1 step between checkpoints, got 0".into(),
            );
        }
        if self.lease < Duration::from_millis(100) || self.lease > Duration::from_secs(3600) {
            return bad(
                "lease_ms",
                format!("expected 100..=3600000 ms, got {}", self.lease.as_millis()),
            );
        }
        if self.max_message_bytes < 1 << 20 {
            return bad("max_message_mb", "expected at least 1 MiB".into());
        }
        if self.resume.is_some() && self.auto_resume {
            return bad(
                "auto_resume",
                "give either --resume DIR or --auto-resume, not both".into(),
            );
        }
        let local = self.spawn_workers == Some(0);
        if !local
            && !self.listen.ip().is_loopback()
            && self.token.is_none()
            && self.tls.is_none()
            && !self.insecure
        {
            return bad(
                "listen",
                format!(
                    "refusing to serve on non-loopback address {} without a token (--token) or TLS (--tls-cert/--tls-key); pass --insecure to allow it",
                    self.listen
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrap {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn args(list: &[&str]) -> TrainArgs {
        Wrap::try_parse_from(std::iter::once("train").chain(list.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let mut a = args(&["--hidden", "16"]);
        let file: TrainArgs =
            toml::from_str("hidden = 32\nlayers = 3\nhead = \"softmax\"\n").unwrap();
        a.fill_from(file);
        let c = a.resolve().unwrap();
        assert_eq!(c.spec.model.hidden, 16, "flag wins over file");
        assert_eq!(c.spec.model.layers, 3, "file wins over default");
        assert_eq!(c.spec.model.head, Head::Softmax);
        assert_eq!(c.spec.batch_size, 10, "default");
    }

    #[test]
    fn unknown_toml_keys_and_bad_values_name_the_field() {
        let e = toml::from_str::<TrainArgs>("hiden = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hiden"), "{e}");
        let e = args(&["--head", "relu"]).resolve().unwrap_err().to_string();
        assert!(e.contains("head") && e.contains("relu"), "{e}");
        let e = args(&["--batch-size", "0"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = args(&["--reset-states", "every:x"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("reset_states") && e.contains("every:K"), "{e}");
        let e = args(&["--tls-cert", "a.pem"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_key"), "{e}");
    }

    #[test]
    fn non_loopback_needs_protection() {
        let e = args(&["--listen", "0.0.0.0:0"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing") && e.contains("--insecure"), "{e}");
        assert!(
            args(&["--listen", "0.0.0.0:0", "--insecure"])
                .resolve()
                .is_ok()
        );
        assert!(
            args(&["--listen", "0.0.0.0:0", "--token", "s3cret"])
                .resolve()
                .is_ok()
        );
        assert!(
            args(&["--listen", "0.0.0.0:0", "--spawn-workers", "0"])
                .resolve()
                .is_ok()
        );
    }
}
