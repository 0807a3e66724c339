//! Configuration of the `worker` program: flags > `CARRY_*` environment > TOML (`--config`) >
//! defaults (layered by [`runtime::config`]), resolved into a plain [`WorkerConfig`] whose errors
//! name the field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use model::device::DeviceChoice;
use model::engine::EngineKind;
use serde::Deserialize;

use crate::error::WorkerError;

/// Joins a training job and computes shards of its steps.
#[derive(Debug, Clone, Default, Parser, Deserialize)]
#[command(name = "worker", version, about)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerArgs {
    /// TOML file with any of these options (keys as flag names with `_`).
    #[arg(long, env = "CARRY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the resolved configuration and exit.
    #[arg(long, env = "CARRY_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip)]
    pub dry_run: Option<bool>,
    /// Coordinator URL, e.g. http://10.0.0.5:50051 or https://coordinator:50051.
    #[arg(long, env = "CARRY_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Device: auto (GPU through wgpu if present, else CPU), wgpu, vulkan, metal, dx12, cpu [default: auto].
    #[arg(long, env = "CARRY_DEVICE", value_enum)]
    pub device: Option<DeviceChoice>,
    /// Engine [default: fused].
    #[arg(long, env = "CARRY_ENGINE", value_enum)]
    pub engine: Option<EngineKind>,
    /// Name shown in the coordinator's logs and step log [default: host name and pid].
    #[arg(long, env = "CARRY_WORKER_NAME")]
    pub name: Option<String>,
    /// CPU threads for the CPU engine (0 = all cores) [default: 0].
    #[arg(long, env = "CARRY_THREADS")]
    pub threads: Option<usize>,
    /// Serve the gRPC health service (plaintext) on this address, for kubelet probes.
    #[arg(long, env = "CARRY_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Shared token of the job.
    #[arg(long, env = "CARRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the shared token.
    #[arg(long, env = "CARRY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA (PEM, one or more certificates) to verify the coordinator's certificate with.
    #[arg(long, env = "CARRY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "CARRY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, env = "CARRY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the coordinator's certificate against (default: the URL's host).
    #[arg(long, env = "CARRY_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Give up after failing to reach the coordinator for this many seconds (0 = never) [default: 0].
    #[arg(long, env = "CARRY_GIVE_UP_SECS")]
    pub give_up_secs: Option<u64>,
    /// Largest gRPC message accepted, in MiB [default: 64].
    #[arg(long, env = "CARRY_MAX_MESSAGE_MB")]
    pub max_message_mb: Option<usize>,
    /// Where to accept the connections the workers of a view sum their gradients over (the peer port)
    /// [default: port 0 on the address this machine reaches the coordinator from].
    #[arg(long, env = "CARRY_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// `host` or `host:port` the other workers reach the peer port at, when it is not the
    /// listening address (behind NAT; in Kubernetes the pod IP) [default: the listening address,
    /// with an unspecified IP replaced by the one the coordinator is reached from].
    #[arg(long, env = "CARRY_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// Wait this long before computing each shard: simulates a slower device (tests, demos).
    #[arg(long, env = "CARRY_THROTTLE_MS", hide = true)]
    pub throttle_ms: Option<u64>,
    /// Benchmark aid (scripts/simulate.sh): hold every message received (directives, report
    /// answers, peer chunks) this many microseconds before it is handled, as a network link's
    /// delay would [default: 0].
    #[arg(long, env = "CARRY_LINK_DELAY_US", hide = true)]
    pub link_delay_us: Option<u64>,
    /// Misbehave from a step on, to exercise the coordinator's fault handling (tests, drills):
    /// `hang:STEP` (compute never returns, heartbeats go on), `corrupt:STEP` (finite but huge
    /// gradients), `bad-shape:STEP` (a gradient one value short), `fail:STEP` (the engine fails).
    #[arg(long, env = "CARRY_FAULT", hide = true, value_parser = runtime::config::parse_named::<Fault>("fault"))]
    pub fault: Option<Fault>,
}

/// A misbehaviour injected from a step on (see `--fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub(crate) enum Fault {
    /// Compute never returns; heartbeats go on (a wedged GPU).
    Hang(u64),
    /// Results with finite but huge gradients (silent data corruption).
    Corrupt(u64),
    /// Results with a gradient one value short (a broken client).
    BadShape(u64),
    /// The engine fails on every shard (reported to the coordinator).
    Fail(u64),
}

impl Fault {
    /// Whether the fault applies to `step`.
    pub(crate) fn at(&self, step: u64) -> bool {
        let (Self::Hang(s) | Self::Corrupt(s) | Self::BadShape(s) | Self::Fail(s)) = *self;
        step >= s
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err =
            || format!("expected hang:STEP, corrupt:STEP, bad-shape:STEP or fail:STEP, got `{s}`");
        let (kind, step) = s.split_once(':').ok_or_else(err)?;
        let step: u64 = step.parse().map_err(|_| err())?;
        Ok(match kind {
            "hang" => Self::Hang(step),
            "corrupt" => Self::Corrupt(step),
            "bad-shape" => Self::BadShape(step),
            "fail" => Self::Fail(step),
            _ => return Err(err()),
        })
    }
}

impl TryFrom<String> for Fault {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// TLS settings of the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientTls {
    /// CA of the coordinator's certificate (system roots are not used).
    pub ca: Option<PathBuf>,
    /// Client certificate and key.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to verify.
    pub domain: Option<String>,
}

/// The resolved configuration of a worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    /// Coordinator URL.
    pub coordinator: String,
    /// Device.
    pub device: DeviceChoice,
    /// Engine.
    pub engine: EngineKind,
    /// Name.
    pub name: String,
    /// CPU threads.
    pub threads: usize,
    /// Health address.
    pub health_listen: Option<SocketAddr>,
    /// Shared token.
    pub token: Option<proto::security::Token>,
    /// TLS, when the URL is https.
    pub tls: Option<ClientTls>,
    /// Give up reconnecting after this long (`None` = never).
    pub give_up: Option<Duration>,
    /// Largest message in bytes.
    pub max_message_bytes: usize,
    /// Where to accept peer connections (`None`: derived from the coordinator's address).
    pub peer_listen: Option<SocketAddr>,
    /// What to tell the other workers (`None`: the listening address).
    pub peer_advertise: Option<String>,
    /// Delay before computing each shard.
    pub throttle: Duration,
    /// Benchmark aid: how long every received message is held.
    pub link_delay: runtime::net::LinkDelay,
    /// Injected misbehaviour.
    pub fault: Option<Fault>,
}

impl WorkerArgs {
    /// Applies the TOML file under flags and environment.
    pub(crate) fn with_file(mut self) -> Result<Self, WorkerError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let mut f: WorkerArgs = runtime::config::load_toml(&path)?;
        runtime::fill_from!(self, f; coordinator, device, engine, name, threads, health_listen,
            token, token_file, tls_ca, tls_cert, tls_key, tls_domain, give_up_secs,
            max_message_mb, peer_listen, peer_advertise, throttle_ms, link_delay_us, fault);
        Ok(self)
    }

    /// Resolves defaults and validates; errors name the field.
    pub(crate) fn resolve(self) -> Result<WorkerConfig, WorkerError> {
        let bad = |field: &str, msg: String| WorkerError::Config {
            field: field.into(),
            msg,
        };
        let coordinator = self.coordinator.ok_or_else(|| {
            bad(
                "coordinator",
                "expected the coordinator URL (--coordinator or CARRY_COORDINATOR), got none"
                    .into(),
            )
        })?;
        let https = coordinator.starts_with("https://");
        if !https && !coordinator.starts_with("http://") {
            return Err(bad(
                "coordinator",
                format!("expected a URL starting with http:// or https://, got `{coordinator}`"),
            ));
        }
        let device = self.device.unwrap_or_default();
        let engine = self.engine.unwrap_or_default();
        let identity = proto::security::cert_and_key(self.tls_cert, self.tls_key)
            .map_err(|(field, msg)| bad(field, msg))?;
        let tls = if https {
            Some(ClientTls {
                ca: self.tls_ca,
                identity,
                domain: self.tls_domain,
            })
        } else {
            if self.tls_ca.is_some() || identity.is_some() {
                return Err(bad(
                    "coordinator",
                    format!(
                        "TLS files are given, so an https:// URL is expected, got `{coordinator}`"
                    ),
                ));
            }
            None
        };
        let token = proto::security::load_token(self.token.as_deref(), self.token_file.as_deref())
            .map_err(|m| bad("token", m))?;
        let name = self.name.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        });
        let max_message_bytes = self.max_message_mb.unwrap_or(64).saturating_mul(1 << 20);
        if max_message_bytes < 1 << 20 {
            return Err(bad("max_message_mb", "expected at least 1 MiB".into()));
        }
        Ok(WorkerConfig {
            coordinator,
            device,
            engine,
            name,
            threads: self.threads.unwrap_or(0),
            health_listen: self.health_listen,
            token,
            tls,
            give_up: self
                .give_up_secs
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            max_message_bytes,
            peer_listen: self.peer_listen,
            peer_advertise: match self.peer_advertise {
                Some(a) if a.is_empty() || a.chars().any(char::is_whitespace) => {
                    return Err(bad(
                        "peer_advertise",
                        format!("expected host or host:port, got `{a}`"),
                    ));
                }
                a => a,
            },
            throttle: Duration::from_millis(self.throttle_ms.unwrap_or(0)),
            link_delay: runtime::net::LinkDelay(Duration::from_micros(
                self.link_delay_us.unwrap_or(0),
            )),
            fault: self.fault,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<WorkerConfig, WorkerError> {
        WorkerArgs::try_parse_from(std::iter::once("worker").chain(a.iter().copied()))
            .unwrap()
            .resolve()
    }

    /// The error of `a`, from the command line parser or from resolving it.
    fn error(a: &[&str]) -> String {
        match WorkerArgs::try_parse_from(std::iter::once("worker").chain(a.iter().copied())) {
            Err(e) => e.to_string(),
            Ok(w) => w.resolve().unwrap_err().to_string(),
        }
    }

    #[test]
    fn resolves_and_names_bad_fields() {
        let c = parse(&["--coordinator", "http://h:1", "--device", "cpu"]).unwrap();
        assert_eq!(c.device, DeviceChoice::Cpu);
        assert!(c.tls.is_none());
        let e = parse(&["--coordinator", "h:1"]).unwrap_err().to_string();
        assert!(e.contains("coordinator") && e.contains("http://"), "{e}");
        let e = error(&["--coordinator", "http://h:1", "--device", "tpu"]);
        assert!(e.contains("device") && e.contains("tpu"), "{e}");
        let e = error(&["--coordinator", "http://h:1", "--fault", "explode:3"]);
        assert!(e.contains("fault") && e.contains("hang:STEP"), "{e}");
        let f = parse(&["--coordinator", "http://h:1", "--fault", "corrupt:5"]).unwrap();
        assert_eq!(f.fault, Some(Fault::Corrupt(5)));
        assert!(!Fault::Corrupt(5).at(4) && Fault::Corrupt(5).at(5));
        let e = parse(&["--coordinator", "http://h:1", "--tls-ca", "ca.pem"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://"), "{e}");
        assert!(
            parse(&["--coordinator", "https://h:1", "--tls-ca", "ca.pem"])
                .unwrap()
                .tls
                .is_some()
        );
    }
}
