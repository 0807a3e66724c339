//! `coordinator serve`: online prediction with stateful streams. Every stream's `(h, c)` is kept
//! between requests, so a client sends its newest steps and gets the next predictions, continuing
//! where its stream stopped; over gRPC (`carry.v1.Predictor`) and HTTP/JSON.
//!
//! # Layout
//! - [`streams`]: the stream table (state, last output, idle time) and its file in `--state-dir`.
//! - [`engine`]: the one thread that owns the model and the table; requests of different streams
//!   that arrive together run as one engine call, requests of one stream in arrival order.
//! - [`grpc`], [`http`]: the two front ends, thin adapters over [`engine::Handle`].
//!
//! Streams survive restarts: on SIGTERM the table is written atomically to `--state-dir` and read
//! back at start. Idle streams are evicted after `--state-ttl`. SIGHUP, or a new checkpoint in the
//! model's run directory, reloads the weights and keeps the streams.

pub(crate) mod engine;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod streams;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use model::config::Head;
use model::device::DeviceChoice;
use model::engine::EngineKind;
use runtime::config::parse_duration;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::TlsFiles;
use crate::error::CoordError;

/// Options of `coordinator serve`, each from a flag, an environment variable or the TOML file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeArgs {
    /// TOML file with any of these options (keys as flag names with `_`).
    #[arg(long, env = "CARRY_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Print the resolved configuration and exit.
    #[arg(long, env = "CARRY_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip)]
    pub(crate) dry_run: Option<bool>,
    /// The model: a run directory, a checkpoint, or PyTorch-layout safetensors weights.
    #[arg(long, env = "CARRY_MODEL")]
    pub(crate) model: Option<PathBuf>,
    /// Head activation of safetensors weights (a checkpoint knows its own).
    #[arg(long, env = "CARRY_HEAD", value_enum)]
    pub(crate) head: Option<Head>,
    /// gRPC address (carry.v1.Predictor and health) [default: 127.0.0.1:50061].
    #[arg(long, env = "CARRY_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// HTTP/JSON address (off unless given).
    #[arg(long, env = "CARRY_HTTP_LISTEN")]
    pub(crate) http_listen: Option<SocketAddr>,
    /// Extra plaintext port serving only the gRPC health service (for kubelet probes).
    #[arg(long, env = "CARRY_HEALTH_LISTEN")]
    pub(crate) health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long, env = "CARRY_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Directory where the streams are saved at SIGTERM and read back at start.
    #[arg(long, env = "CARRY_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Evict streams idle this long (500ms, 30s, 10m, 2h, 1d) [default: 24h].
    #[arg(long, env = "CARRY_STATE_TTL", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration_from_str")]
    pub(crate) state_ttl: Option<Duration>,
    /// Most streams kept at once; more new streams are refused [default: 1000000].
    #[arg(long, env = "CARRY_MAX_STREAMS")]
    pub(crate) max_streams: Option<usize>,
    /// Most requests of different streams run as one engine call; 1 turns batching off
    /// [default: 256].
    #[arg(long, env = "CARRY_MAX_BATCH")]
    pub(crate) max_batch: Option<usize>,
    /// Requests waiting at most; more are refused with RESOURCE_EXHAUSTED / HTTP 429
    /// [default: 4096].
    #[arg(long, env = "CARRY_QUEUE")]
    pub(crate) queue: Option<usize>,
    /// Device [default: cpu].
    #[arg(long, env = "CARRY_DEVICE", value_enum)]
    pub(crate) device: Option<DeviceChoice>,
    /// Engine [default: fused].
    #[arg(long, env = "CARRY_ENGINE", value_enum)]
    pub(crate) engine: Option<EngineKind>,
    /// CPU threads of the engine (0 = all cores) [default: 1].
    #[arg(long, env = "CARRY_THREADS")]
    pub(crate) threads: Option<usize>,
    /// Shared token every client must present (at least 16 bytes).
    #[arg(long, env = "CARRY_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the shared token.
    #[arg(long, env = "CARRY_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// TLS certificate (PEM), for gRPC and HTTP.
    #[arg(long, env = "CARRY_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CARRY_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to (mutual TLS).
    #[arg(long, env = "CARRY_TLS_CLIENT_CA")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback address without a token or mutual TLS.
    #[arg(long, env = "CARRY_INSECURE", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) insecure: Option<bool>,
    /// Largest gRPC message, in MiB [default: 64].
    #[arg(long, env = "CARRY_MAX_MESSAGE_MB")]
    pub(crate) max_message_mb: Option<usize>,
}

fn duration_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// The resolved configuration of `serve`.
#[derive(Debug, Clone)]
pub(crate) struct ServeConfig {
    pub(crate) model: PathBuf,
    pub(crate) head: Option<Head>,
    pub(crate) listen: SocketAddr,
    pub(crate) http_listen: Option<SocketAddr>,
    pub(crate) health_listen: Option<SocketAddr>,
    pub(crate) metrics_listen: Option<SocketAddr>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) state_ttl: Duration,
    pub(crate) max_streams: usize,
    pub(crate) max_batch: usize,
    pub(crate) queue: usize,
    pub(crate) device: DeviceChoice,
    pub(crate) engine: EngineKind,
    pub(crate) threads: usize,
    pub(crate) token: Option<proto::security::Token>,
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) max_message_bytes: usize,
}

impl ServeArgs {
    /// Reads `--config` (if any), applies precedence and defaults, and validates.
    pub(crate) fn resolve(mut self) -> Result<ServeConfig, CoordError> {
        if let Some(path) = self.config.clone() {
            let mut file: ServeArgs = runtime::config::load_toml(&path)?;
            runtime::fill_from!(self, file; model, head, listen, http_listen, health_listen,
                metrics_listen, state_dir, state_ttl, max_streams, max_batch, queue, device, engine,
                threads, token, token_file, tls_cert, tls_key, tls_client_ca, insecure,
                max_message_mb);
        }
        let bad = |field: &str, msg: String| CoordError::Config {
            field: field.into(),
            msg,
        };
        let model = self.model.ok_or_else(|| {
            bad(
                "model",
                "expected a run directory, checkpoint or safetensors file (--model), got none"
                    .into(),
            )
        })?;
        let tls = match proto::security::cert_and_key(self.tls_cert, self.tls_key)
            .map_err(|(field, msg)| bad(field, msg))?
        {
            Some((cert, key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
            }),
            None if self.tls_client_ca.is_some() => {
                return Err(bad(
                    "tls_client_ca",
                    "mutual TLS needs --tls-cert and --tls-key too".into(),
                ));
            }
            None => None,
        };
        let token = proto::security::load_token(self.token.as_deref(), self.token_file.as_deref())
            .map_err(|m| bad("token", m))?;
        if let Some(t) = &token {
            t.check_strength().map_err(|m| bad("token", m))?;
        }
        let cfg = ServeConfig {
            model,
            head: self.head,
            listen: self
                .listen
                .unwrap_or_else(|| "127.0.0.1:50061".parse().expect("valid address")),
            http_listen: self.http_listen,
            health_listen: self.health_listen,
            metrics_listen: self.metrics_listen,
            state_dir: self.state_dir,
            state_ttl: self.state_ttl.unwrap_or(Duration::from_secs(86_400)),
            max_streams: self.max_streams.unwrap_or(1_000_000),
            max_batch: self.max_batch.unwrap_or(256),
            queue: self.queue.unwrap_or(4096),
            device: self.device.unwrap_or(DeviceChoice::Cpu),
            engine: self.engine.unwrap_or_default(),
            threads: self.threads.unwrap_or(1),
            token,
            tls,
            max_message_bytes: self.max_message_mb.unwrap_or(64).saturating_mul(1 << 20),
        };
        if cfg.max_batch == 0 || cfg.queue == 0 || cfg.max_streams == 0 {
            return Err(bad(
                "max_batch",
                "expected --max-batch, --queue and --max-streams of at least 1".into(),
            ));
        }
        if cfg.state_ttl < Duration::from_millis(10) {
            return Err(bad(
                "state_ttl",
                format!(
                    "expected at least 10ms, got {} ms",
                    cfg.state_ttl.as_millis()
                ),
            ));
        }
        let mutual = cfg.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let public = !cfg.listen.ip().is_loopback()
            || cfg.http_listen.is_some_and(|a| !a.ip().is_loopback());
        if public && cfg.token.is_none() && !mutual {
            if self.insecure.unwrap_or(false) {
                warn!(
                    "--insecure: serving on a non-loopback address without a token or mutual TLS; anyone who can reach it can read and change every stream"
                );
            } else {
                return Err(bad(
                    "listen",
                    "refusing to serve on a non-loopback address without a token (--token) or mutual TLS (--tls-client-ca); pass --insecure to allow it".into(),
                ));
            }
        }
        Ok(cfg)
    }
}

/// Loads the model of `cfg` and the modification time of its file (for reloads).
fn load(cfg: &ServeConfig) -> Result<(model::export::LoadedModel, Option<SystemTime>), CoordError> {
    let file = model::checkpoint::resolve(&cfg.model);
    let m = model::export::load_any(&cfg.model, cfg.head)?;
    let mtime = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
    Ok((m, mtime))
}

/// Runs `serve` until SIGTERM or Ctrl-C; `ready` hears the bound gRPC and HTTP addresses.
pub(crate) async fn run(
    cfg: ServeConfig,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<(), CoordError> {
    let (model, mut mtime) = load(&cfg)?;
    info!(model = %cfg.model.display(), hidden = model.config.hidden, layers = model.config.layers, "model loaded");
    let restored = match &cfg.state_dir {
        Some(d) => streams::Table::restore(d, &model.config, cfg.max_streams)?,
        None => streams::Table::new(cfg.max_streams),
    };
    if restored.len() > 0 {
        info!(
            streams = restored.len(),
            "streams restored from --state-dir"
        );
    }
    if let Some(addr) = cfg.metrics_listen {
        crate::report::prom::install_serving(addr)?;
    }
    // TLS files are read now, so a bad one stops the program before it serves anything
    crate::server::tls_config(cfg.tls.as_ref(), None)?;
    let http_tls = match (&cfg.tls, cfg.http_listen) {
        (Some(t), Some(_)) => Some(http::acceptor(t).map_err(|msg| CoordError::Config {
            field: "tls_cert".into(),
            msg,
        })?),
        _ => None,
    };
    let handle = engine::start(&cfg, model, restored)?;
    let grpc_listener = crate::server::bind(cfg.listen).await?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|e| CoordError::io("reading the bound address", e))?;
    let http_listener = match cfg.http_listen {
        Some(a) => Some(crate::server::bind(a).await?),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let stop = CancellationToken::new();
    let grpc = tokio::spawn(grpc::serve(
        cfg.clone(),
        handle.clone(),
        grpc_listener,
        stop.clone(),
    ));
    let http_task = http_listener.map(|l| {
        tokio::spawn(http::serve(
            cfg.clone(),
            handle.clone(),
            l,
            stop.clone(),
            http_tls,
        ))
    });
    ready(grpc_addr, http_addr);
    info!(grpc = %grpc_addr, http = ?http_addr, streams = handle.streams(), "serving predictions");

    // reloads (SIGHUP or a new checkpoint) and evictions, until shutdown
    let mut hup = hangups();
    let mut tick = tokio::time::interval(
        (cfg.state_ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(2)),
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hup.recv() => reload(&cfg, &handle, &mut mtime, true).await,
            _ = tick.tick() => {
                handle.evict(Instant::now()).await;
                reload(&cfg, &handle, &mut mtime, false).await;
            }
        }
    }
    info!("shutting down");
    stop.cancel();
    let _ = grpc.await;
    if let Some(t) = http_task {
        let _ = t.await;
    }
    if let Some(dir) = &cfg.state_dir {
        let n = handle.save(dir.clone()).await?;
        info!(streams = n, dir = %dir.display(), "streams saved");
    }
    Ok(())
}

/// A stream of SIGHUPs (nothing where there are no signals).
fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut s) = signal(SignalKind::hangup()) else {
            return;
        };
        while s.recv().await.is_some() {
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Reloads the weights when asked (SIGHUP) or when the model's file changed.
async fn reload(
    cfg: &ServeConfig,
    handle: &engine::Handle,
    mtime: &mut Option<SystemTime>,
    asked: bool,
) {
    let file = model::checkpoint::resolve(&cfg.model);
    let now = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
    if !asked && (now.is_none() || now == *mtime) {
        return;
    }
    let loaded = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || load(&cfg)).await
    };
    match loaded {
        Ok(Ok((m, t))) => match handle.reload(m).await {
            Ok(()) => {
                *mtime = t;
                info!(model = %cfg.model.display(), "weights reloaded; streams kept");
            }
            Err(e) => {
                *mtime = now;
                error!(cause = %e, "the new weights were not loaded; serving the old ones");
            }
        },
        Ok(Err(e)) => {
            *mtime = now;
            error!(cause = %e, "reloading the model failed; serving the old weights");
        }
        Err(e) => error!(cause = %e, "reloading the model panicked"),
    }
}
