//! `coordinator train`: loads the data, starts or resumes the trainer, then either trains in
//! this process or serves the job to workers over gRPC until it is complete.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::checkpoint::{self, Checkpoint};
use model::data::{Dataset, SyntheticSpec, load_npz, synthetic};
use model::trainer::Trainer;
use proto::pb::coordinator_server::CoordinatorServer;
use proto::security::CheckToken;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::config::{DataSource, TrainConfig};
use crate::error::CoordError;
use crate::job::Job;
use crate::report::{self, ReportConfig, Summary};
use crate::service::{CoordinatorService, Shared};

/// How long workers get to hear that the job is over before the server stops.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control window for streams and connections.
pub const HTTP2_WINDOW: u32 = 8 << 20;
/// How long open connections may delay the end of serving.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Loads the training data the config names.
pub fn load_data(cfg: &TrainConfig) -> Result<Dataset, CoordError> {
    Ok(match &cfg.data {
        DataSource::Synthetic => synthetic(&SyntheticSpec {
            sequences: cfg.sequences,
            val_sequences: cfg.val_sequences,
            streams: cfg.spec.batch_size,
            timesteps: cfg.timesteps,
            seed: cfg.spec.seed,
            noise: 0.05,
        }),
        DataSource::Npz(p) => load_npz(p, cfg.timesteps, cfg.features)?,
    })
}

/// The trainer for a new run, or the resumed one.
pub fn trainer(cfg: &TrainConfig, data: Dataset) -> Result<Trainer, CoordError> {
    let mut spec = cfg.spec.clone();
    spec.model.input = data.input_features();
    spec.model.output = data.output_features();
    spec.model.cond = if cfg.init_from_cond {
        data.cond_width()
    } else {
        None
    };
    if cfg.init_from_cond && data.cond_width().is_none() {
        return Err(CoordError::Config {
            field: "init_from_cond".into(),
            msg: format!("the data {} has no `cond` array to project from", data.name),
        });
    }
    let data = Arc::new(data);
    let resume_from = match (&cfg.resume, cfg.auto_resume) {
        (Some(p), _) => Some(p.clone()),
        (None, true) if checkpoint::resolve(&cfg.out).is_file() => Some(cfg.out.clone()),
        _ => None,
    };
    let Some(path) = resume_from else {
        return Ok(Trainer::new(spec, data)?);
    };
    let mut ck = Checkpoint::load(&path)?;
    let saved = &ck.spec;
    let differs = |field: &str, a: String, b: String| -> Result<(), CoordError> {
        if a != b {
            return Err(CoordError::Config {
                field: field.into(),
                msg: format!(
                    "resuming {}: the checkpoint has {b}, the configuration {a}",
                    path.display()
                ),
            });
        }
        Ok(())
    };
    differs(
        "model",
        format!("{:?}", spec.model),
        format!("{:?}", saved.model),
    )?;
    differs(
        "adam",
        format!("{:?}", spec.adam),
        format!("{:?}", saved.adam),
    )?;
    differs(
        "batch_size",
        spec.batch_size.to_string(),
        saved.batch_size.to_string(),
    )?;
    differs("seed", spec.seed.to_string(), saved.seed.to_string())?;
    differs(
        "reset_states",
        spec.reset.to_string(),
        saved.reset.to_string(),
    )?;
    // epochs, steps and validation start may change: a resumed run can be extended
    ck.spec.epochs = spec.epochs;
    ck.spec.max_steps = spec.max_steps;
    ck.spec.val_state = spec.val_state;
    let t = Trainer::resume(ck, data)?;
    info!(path = %path.display(), step = t.cursor().global, epoch = t.cursor().epoch, "resumed from checkpoint");
    Ok(t)
}

fn incarnation() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = model::rng::hash_words(&[nanos as u64, u64::from(std::process::id())]);
    format!("{:08x}", h as u32)
}

/// Accepted connections with Nagle's algorithm off: a step is a small request and a small reply,
/// which Nagle plus delayed acknowledgements would hold back for tens of milliseconds.
fn incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

/// Binds the gRPC listener (port 0 allowed).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, CoordError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CoordError::io(format!("binding {addr}"), e))
}

/// Runs the job described by `cfg` until it is complete or `shutdown` fires. `listener` is the
/// bound gRPC socket (bound here from `cfg.listen` when `None`; unused in-process).
pub async fn run(
    cfg: TrainConfig,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<Summary, CoordError> {
    let data = load_data(&cfg)?;
    let streams = model::stream::Streams::new(data.train.x.n, cfg.spec.batch_size, &data.name)?;
    if streams.dropped > 0 {
        warn!(
            dropped = streams.dropped,
            sequences = streams.sequences,
            batch = streams.batch,
            "the trailing partial batch is dropped: {} sequences do not fill a batch of {}",
            streams.dropped,
            streams.batch
        );
    }
    let trainer = trainer(&cfg, data)?;
    info!(
        data = %trainer.data().name,
        sequences = streams.sequences,
        steps_per_epoch = streams.steps_per_epoch,
        total_steps = trainer.total_steps(),
        params = trainer.layout().len(),
        "job"
    );
    if let Some(addr) = cfg.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| CoordError::Config {
                field: "metrics_listen".into(),
                msg: format!("{addr}: {e}"),
            })?;
        info!(%addr, "serving Prometheus metrics");
    }
    let (events, reporter) = report::spawn(ReportConfig {
        out: cfg.out.clone(),
        progress: cfg.progress,
        total_steps: trainer.total_steps(),
        start_step: trainer.cursor().global,
        batch_size: cfg.spec.batch_size,
    })?;
    let out = cfg.out.clone();
    if trainer.is_done() {
        info!("the run in the checkpoint is already complete; workers that join are told so");
    }
    let result = if cfg.spawn_workers == Some(0) {
        let (cfg2, token) = (cfg.clone(), shutdown.clone());
        let t =
            tokio::task::spawn_blocking(move || crate::local::run(&cfg2, trainer, &events, &token))
                .await
                .map_err(|e| CoordError::JobFailed(format!("training thread panicked: {e}")))??;
        save_if_interrupted(&t, &out).await?;
        Ok(())
    } else {
        let listener = match listener {
            Some(l) => l,
            None => bind(cfg.listen).await?,
        };
        serve(&cfg, trainer, events, listener, shutdown).await
    };
    let summary = reporter
        .await
        .map_err(|e| CoordError::JobFailed(format!("reporter panicked: {e}")))??;
    result?;
    Ok(summary)
}

async fn save_if_interrupted(t: &Trainer, out: &std::path::Path) -> Result<(), CoordError> {
    if t.is_done() {
        return Ok(());
    }
    let ck = t.checkpoint();
    let path = out.join(checkpoint::CHECKPOINT_FILE);
    tokio::task::spawn_blocking(move || ck.save(&path))
        .await
        .map_err(|e| CoordError::JobFailed(format!("checkpoint writer panicked: {e}")))??;
    info!(step = t.cursor().global, "checkpoint written at shutdown");
    Ok(())
}

fn tls_config(cfg: &TrainConfig) -> Result<Option<ServerTlsConfig>, CoordError> {
    let Some(tls) = &cfg.tls else { return Ok(None) };
    let pem = |p: &std::path::Path, field: &str| {
        proto::security::read_pem(p, &format!("--{}", field.replace('_', "-"))).map_err(|msg| {
            CoordError::Config {
                field: field.into(),
                msg,
            }
        })
    };
    let mut c = ServerTlsConfig::new().identity(Identity::from_pem(
        pem(&tls.cert, "tls_cert")?,
        pem(&tls.key, "tls_key")?,
    ));
    if let Some(ca) = &tls.client_ca {
        c = c.client_ca_root(Certificate::from_pem(pem(ca, "tls_client_ca")?));
    }
    Ok(Some(c))
}

async fn health_only(
    addr: SocketAddr,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, CoordError> {
    let l = bind(addr).await?;
    info!(addr = %l.local_addr().map_err(|e| CoordError::io("health listener", e))?, "serving plaintext health checks");
    Ok(tokio::spawn(async move {
        if let Err(e) = Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming(l), shutdown.cancelled_owned())
            .await
        {
            warn!(cause = %e, "health server stopped");
        }
    }))
}

async fn serve(
    cfg: &TrainConfig,
    trainer: Trainer,
    events: tokio::sync::mpsc::UnboundedSender<report::Event>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), CoordError> {
    let addr = listener
        .local_addr()
        .map_err(|e| CoordError::io("reading the bound address", e))?;
    let inc = incarnation();
    let job = Job::new(trainer, inc.clone(), cfg.lease, cfg.workers);
    let shared = Arc::new(Shared::new(
        job,
        events,
        inc,
        cfg.lease,
        cfg.checkpoint_every,
    ));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let server_stop = CancellationToken::new();
    let mut health_task = None;
    if let Some(a) = cfg.health_listen {
        health_task = Some(health_only(a, health.clone(), server_stop.clone()).await?);
    }
    let svc = CoordinatorServer::new(CoordinatorService::new(shared.clone()))
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let svc = InterceptedService::new(
        svc,
        CheckToken::new(cfg.token.as_ref().map(proto::security::Token::expose)),
    );
    // Parameters and gradients are a few hundred KiB per step; HTTP/2's default 64 KiB windows
    // would make each transfer wait for several window updates.
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .initial_stream_window_size(Some(HTTP2_WINDOW))
        .initial_connection_window_size(Some(HTTP2_WINDOW));
    let scheme = if let Some(t) = tls_config(cfg)? {
        builder = builder.tls_config(t)?;
        "https"
    } else {
        "http"
    };
    let stop = server_stop.clone();
    let server = tokio::spawn(
        builder
            .add_service(health)
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming(listener), stop.cancelled_owned()),
    );
    info!(%addr, tls = cfg.tls.is_some(), token = cfg.token.is_some(), workers = cfg.workers, "serving the job");

    // leases
    let ticker = {
        let (shared, stop) = (shared.clone(), server_stop.clone());
        let period = (cfg.lease / 4).max(Duration::from_millis(25));
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = iv.tick() => shared.expire(Instant::now()),
                }
            }
        })
    };

    let mut workers = match cfg.spawn_workers {
        Some(k) if k > 0 => Some(crate::spawn::spawn(
            cfg,
            k,
            &format!("{scheme}://127.0.0.1:{}", addr.port()),
        )?),
        _ => None,
    };

    // wait for the end of the job, then give workers time to hear it
    let mut finished_at: Option<tokio::time::Instant> = None;
    let mut spawn_failure = None;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (finished, live) = {
            let j = shared.job();
            (j.is_finished(), j.live_workers())
        };
        if !finished
            && live == 0
            && let Some(w) = workers.as_mut()
            && w.all_exited()
        {
            spawn_failure = Some(
                "every spawned worker exited before the job was complete (their errors are above)",
            );
            break;
        }
        if finished {
            let at = *finished_at.get_or_insert_with(tokio::time::Instant::now);
            if cfg.linger {
                info!("job over; lingering until SIGTERM");
                shutdown.cancelled().await;
                break;
            }
            if live == 0 || at.elapsed() >= FINISH_GRACE {
                break;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                info!("shutting down before the job is complete");
                break;
            }
            _ = &mut notified => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    server_stop.cancel();
    let _ = ticker.await;
    // Graceful shutdown waits for open connections; a client that never answers must not keep the
    // coordinator alive, so give them a bounded time.
    let server_abort = server.abort_handle();
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(e))) => warn!(cause = %e, "gRPC server error"),
        Err(_) => {
            warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
            server_abort.abort();
        }
        _ => {}
    }
    if let Some(t) = health_task {
        let abort = t.abort_handle();
        if tokio::time::timeout(SHUTDOWN_GRACE, t).await.is_err() {
            abort.abort();
        }
    }
    if let Some(w) = workers {
        w.reap(Duration::from_secs(10)).await;
    }
    let (failure, trainer) = {
        let j = shared.job();
        (j.failure().map(str::to_string), j.trainer().clone())
    };
    shared.close_events();
    drop(shared);
    save_if_interrupted(&trainer, &cfg.out).await?;
    if let Some(f) = spawn_failure {
        return Err(CoordError::Spawn(f.into()));
    }
    match failure {
        Some(f) => Err(CoordError::JobFailed(f)),
        None => Ok(()),
    }
}
