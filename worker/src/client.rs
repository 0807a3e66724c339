//! Connecting to the coordinator: TLS, the token on every call, message limits, and retries with
//! exponential backoff until it answers.

use std::time::{Duration, Instant};

use proto::pb::coordinator_client::CoordinatorClient;
use proto::security::{AddToken, read_pem};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::config::WorkerConfig;
use crate::error::WorkerError;

/// The client type used everywhere in the worker.
pub type Client = CoordinatorClient<InterceptedService<Channel, AddToken>>;

fn endpoint(cfg: &WorkerConfig) -> Result<Endpoint, WorkerError> {
    let bad = |field: &str, msg: String| WorkerError::Config { field: field.into(), msg };
    let mut ep = Endpoint::from_shared(cfg.coordinator.clone())
        .map_err(|e| bad("coordinator", format!("`{}`: {e}", cfg.coordinator)))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &cfg.tls {
        let mut t = ClientTlsConfig::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(read_pem(ca, "--tls-ca").map_err(|m| bad("tls_ca", m))?));
        }
        if let Some((c, k)) = &tls.identity {
            let cert = read_pem(c, "--tls-cert").map_err(|m| bad("tls_cert", m))?;
            let key = read_pem(k, "--tls-key").map_err(|m| bad("tls_key", m))?;
            t = t.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &tls.domain {
            t = t.domain_name(d.clone());
        }
        ep = ep.tls_config(t).map_err(|e| bad("tls_ca", e.to_string()))?;
    }
    Ok(ep)
}

/// Connects, retrying with backoff (100 ms doubling to 5 s) until the coordinator answers,
/// `shutdown` fires (`Ok(None)`), or `give_up` passes.
pub async fn connect(cfg: &WorkerConfig, shutdown: &CancellationToken) -> Result<Option<Client>, WorkerError> {
    let ep = endpoint(cfg)?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        match ep.connect().await {
            Ok(ch) => {
                if attempts > 0 {
                    info!(url = %cfg.coordinator, attempts, "connected");
                }
                let client = CoordinatorClient::with_interceptor(ch, AddToken::new(cfg.token.as_deref()))
                    .max_decoding_message_size(cfg.max_message_bytes)
                    .max_encoding_message_size(cfg.max_message_bytes);
                return Ok(Some(client));
            }
            Err(e) => {
                attempts += 1;
                let cause = source_chain(&e);
                if let Some(limit) = cfg.give_up
                    && started.elapsed() >= limit
                {
                    return Err(WorkerError::Unreachable { url: cfg.coordinator.clone(), secs: limit.as_secs(), last: cause });
                }
                if attempts == 1 || attempts.is_power_of_two() {
                    warn!(url = %cfg.coordinator, %cause, retry_in_ms = delay.as_millis() as u64, "coordinator not reachable yet");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// An error with its causes, `a: b: c`.
pub fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
