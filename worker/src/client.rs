//! Connecting to the coordinator: TLS, the token on every call, message limits, retries with
//! exponential backoff until it answers, and tensors too large for one message (blobs).

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
pub(crate) type Client = CoordinatorClient<InterceptedService<Channel, AddToken>>;

fn endpoint(cfg: &WorkerConfig) -> Result<Endpoint, WorkerError> {
    let bad = |field: &str, msg: String| WorkerError::Config {
        field: field.into(),
        msg,
    };
    let mut ep = Endpoint::from_shared(cfg.coordinator.clone())
        .map_err(|e| bad("coordinator", format!("`{}`: {e}", cfg.coordinator)))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(runtime::net::KEEPALIVE)
        .keep_alive_timeout(runtime::net::KEEPALIVE)
        .initial_stream_window_size(Some(runtime::net::HTTP2_WINDOW))
        .initial_connection_window_size(Some(runtime::net::HTTP2_WINDOW))
        .max_frame_size(Some(runtime::net::HTTP2_FRAME));
    if let Some(tls) = &cfg.tls {
        let mut t = ClientTlsConfig::new();
        if let Some(ca) = &tls.ca {
            t = t.ca_certificate(Certificate::from_pem(
                read_pem(ca, "--tls-ca").map_err(|m| bad("tls_ca", m))?,
            ));
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

/// Opens a connection (one attempt).
pub(crate) async fn connect(cfg: &WorkerConfig) -> Result<Client, WorkerError> {
    let ep = endpoint(cfg)?;
    match ep.connect().await {
        Ok(ch) => Ok(
            CoordinatorClient::with_interceptor(ch, AddToken::new(cfg.token.as_ref()))
                .max_decoding_message_size(cfg.max_message_bytes)
                .max_encoding_message_size(cfg.max_message_bytes),
        ),
        Err(e) => Err(WorkerError::Transport(source_chain(&e))),
    }
}

/// Exponential backoff (100 ms doubling to 5 s) over consecutive failures to reach the
/// coordinator, giving up after `give_up` without a success.
#[derive(Debug)]
pub(crate) struct Retry {
    give_up: Option<Duration>,
    since: Option<Instant>,
    delay: Duration,
    failures: u32,
}

impl Retry {
    /// A fresh backoff.
    pub(crate) fn new(give_up: Option<Duration>) -> Self {
        Self {
            give_up,
            since: None,
            delay: Duration::from_millis(100),
            failures: 0,
        }
    }

    /// The coordinator answered.
    pub(crate) fn success(&mut self) {
        if self.failures > 0 {
            info!(failures = self.failures, "reached the coordinator");
        }
        *self = Self::new(self.give_up);
    }

    /// Records a failure and sleeps before the next try. `Ok(false)` means shutdown was requested.
    pub(crate) async fn failed(
        &mut self,
        url: &str,
        cause: &str,
        shutdown: &CancellationToken,
    ) -> Result<bool, WorkerError> {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.failures += 1;
        if let Some(limit) = self.give_up
            && since.elapsed() >= limit
        {
            return Err(WorkerError::Unreachable {
                url: url.to_string(),
                secs: limit.as_secs(),
                last: cause.to_string(),
            });
        }
        if self.failures == 1 || self.failures.is_power_of_two() {
            warn!(%url, %cause, failures = self.failures, retry_in_ms = self.delay.as_millis() as u64, "coordinator not reachable");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(self.delay) => {}
        }
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        Ok(true)
    }
}

/// An error with its causes, `a: b: c`.
pub(crate) fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Fetches every tensor of `m` that the coordinator sent as a blob.
pub(crate) async fn fetch_blobs<M>(
    client: &mut Client,
    id: &str,
    m: &mut M,
    tensors: proto::blob::Tensors<M>,
) -> Result<(), String> {
    for p in proto::blob::pending(m, tensors)? {
        let fail = |s: tonic::Status| format!("reading blob `{}`: {}", p.id, s.message());
        let mut stream = client
            .read_blob(proto::blob::read_request(id, &p.id))
            .await
            .map_err(fail)?
            .into_inner();
        let mut asm = proto::blob::Assembler::new(p.bytes);
        while let Some(chunk) = stream.message().await.map_err(fail)? {
            asm.push(&chunk.data)
                .map_err(|e| format!("blob `{}`: {e}", p.id))?;
        }
        proto::blob::fill(m, tensors, &p, asm.finish());
    }
    Ok(())
}

/// Uploads the largest tensors of `m` until it fits in `limit` bytes; they then travel as blobs.
pub(crate) async fn send_blobs<M: prost::Message>(
    client: &mut Client,
    id: &str,
    m: &mut M,
    limit: usize,
    tensors: proto::blob::Tensors<M>,
) -> Result<(), tonic::Status> {
    let mut ids = Vec::new();
    for data in proto::blob::split(m, limit, tensors) {
        let reply = client
            .write_blob(tokio_stream::iter(proto::blob::upload(id, &data)))
            .await?;
        ids.push(proto::blob::uploaded(reply.into_inner()));
    }
    proto::blob::name_uploads(m, tensors, &ids);
    Ok(())
}
