//! `coordinator train`: takes the run directory, loads the data, starts or resumes the trainer,
//! then either trains in this process or serves the job to workers over gRPC until it is
//! complete, fails, or is stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use data::windows::{SyntheticSpec, load_npz_with, synthetic};
use model::checkpoint::Checkpoint;
use model::state::SlotStates;
use model::trainer::{Data, Trainer};
use proto::pb::coordinator_server::CoordinatorServer;
use proto::security::CheckToken;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::config::{DataSource, TlsFiles, TrainConfig};
use crate::error::CoordError;
use crate::job::Job;
use crate::report::{self, Event, ReportConfig, Summary};
use crate::service::{CoordinatorService, ServiceConfig, Shared};

/// How long workers get to hear that the job is over before the server stops.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// How long open connections may delay the end of serving.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Loads the training data the config names.
pub(crate) fn load_data(cfg: &TrainConfig) -> Result<Data, CoordError> {
    let windows = match &cfg.data {
        DataSource::Table(p) => {
            let spec = cfg
                .spec
                .series
                .as_ref()
                .expect("series settings for a table");
            let (table, mut spec) = data::series::read(p, spec, cfg.max_data_bytes)?;
            spec.fit_observed_flags(&table)?;
            let d = data::series::SeriesData::new(&table, &spec, None)?;
            return Ok(Data::Series(Arc::new(d)));
        }
        DataSource::Synthetic => synthetic(&SyntheticSpec {
            sequences: cfg.sequences,
            val_sequences: cfg.val_sequences,
            streams: cfg.spec.batch_size,
            timesteps: cfg.timesteps,
            seed: cfg.spec.seed,
            noise: 0.05,
        }),
        DataSource::Npz(p) => load_npz_with(p, cfg.timesteps, cfg.features, cfg.max_data_bytes)?,
    };
    Ok(Data::Windows(Arc::new(windows)))
}

/// Whether `data` has a validation part.
fn has_validation(data: &Data) -> bool {
    match data {
        Data::Windows(d) => d.val.is_some(),
        Data::Series(d) => d.spec.val_steps > 0,
    }
}

/// Reads the `h` and `c` of `--initial-state` (each `[layers, B, H]`).
fn initial_states(cfg: &TrainConfig, t: &Trainer) -> Result<Option<SlotStates>, CoordError> {
    let Some(path) = &cfg.initial_state else {
        return Ok(None);
    };
    let m = &t.spec().model;
    let b = t.spec().batch_size;
    let mut arrays = data::npy::read_npz_with(
        path,
        &data::npy::NpzOptions {
            names: Some(&["h", "c", "y"]),
            max_bytes: cfg.max_data_bytes,
        },
    )?;
    let mut take = |k: &str| {
        arrays.remove(k).ok_or_else(|| CoordError::Config {
            field: "initial_state".into(),
            msg: format!(
                "{}: expected arrays `h` and `c`, missing `{k}`",
                path.display()
            ),
        })
    };
    let (h, c) = (take("h")?, take("c")?);
    let want = [m.layers, b, m.hidden];
    for (what, a) in [("h", &h), ("c", &c)] {
        if a.shape != want {
            return Err(CoordError::Model(model::ModelError::shape(
                format!("{}: {what}", path.display()),
                &want,
                &a.shape,
            )));
        }
    }
    Ok(Some(SlotStates::from_flat(
        m.layers, b, m.hidden, h.data, c.data,
    )?))
}

/// The trainer for a new run, or the resumed one.
pub(crate) fn trainer(cfg: &TrainConfig, data: Data) -> Result<Trainer, CoordError> {
    let mut spec = cfg.spec.clone();
    spec.series = data.series().map(|d| d.spec.clone());
    spec.model.input = data.input_features();
    spec.model.output = data.output_features() * spec.outputs_per_target();
    spec.model.cond = if cfg.init_from_cond {
        data.cond_width()
    } else {
        None
    };
    if cfg.init_from_cond && data.cond_width().is_none() {
        return Err(CoordError::Config {
            field: "init_from_cond".into(),
            msg: format!(
                "the data {} has no `cond` array to project from",
                data.name()
            ),
        });
    }
    let resume_from = match (&cfg.resume, cfg.auto_resume) {
        (Some(p), _) => Some(p.clone()),
        (None, true) if model::checkpoint::resolve(cfg.out.path()).is_file() => {
            Some(cfg.out.path().to_path_buf())
        }
        _ => None,
    };
    let Some(path) = resume_from else {
        let given = match &cfg.init_from {
            Some(p) => Some(init_from(cfg, &mut spec, &data, p)?),
            None => None,
        };
        let mut t = Trainer::new(spec, data)?;
        if let Some((params, p)) = given {
            t.set_params(params)?;
            info!(from = %p.display(), hidden = t.spec().model.hidden, layers = t.spec().model.layers, compat = %t.spec().compat, "starting from given weights with a fresh optimizer");
        }
        if cfg.initial_state.is_some() && t.data().series().is_some() {
            return Err(CoordError::Config {
                field: "initial_state".into(),
                msg: "series data starts every series from a zero state at its first chunk, so --initial-state has nothing to set; it applies to .npz windows and synthetic data".into(),
            });
        }
        if let Some(s) = initial_states(cfg, &t)? {
            t.set_states(s)?;
            info!("the first step starts from the given initial state");
        }
        return Ok(t);
    };
    if cfg.initial_state.is_some() {
        return Err(CoordError::Config {
            field: "initial_state".into(),
            msg: "a resumed run continues from its checkpoint's states; --initial-state applies to a new run only".into(),
        });
    }
    let mut ck = Checkpoint::load(&path)?;
    spec.check_resume(&ck.spec).map_err(|e| match e {
        model::ModelError::Config { field, msg } => CoordError::Config {
            field,
            msg: format!("resuming {}: {msg}", path.display()),
        },
        other => CoordError::Model(other),
    })?;
    // epochs, steps and validation start may change: a resumed run can be extended
    ck.spec.epochs = spec.epochs;
    ck.spec.max_steps = spec.max_steps;
    ck.spec.val_state = spec.val_state;
    let t = Trainer::resume(ck, data)?;
    info!(path = %path.display(), step = t.cursor().global, epoch = t.cursor().epoch, "resumed from checkpoint");
    Ok(t)
}

/// Reads the weights of `--init-from` and makes `spec` take their sizes; a size given explicitly
/// that differs from the file's, or a file that does not fit the data, is an error naming the
/// layer, the expected and the given shapes.
fn init_from(
    cfg: &TrainConfig,
    spec: &mut model::config::TrainSpec,
    data: &Data,
    path: &std::path::Path,
) -> Result<(Vec<f32>, std::path::PathBuf), CoordError> {
    let m = model::export::load_any(path, cfg.given.head)?;
    let f = &m.config;
    let bad = |field: &str, msg: String| CoordError::Config {
        field: field.into(),
        msg: format!("{}: {msg}", path.display()),
    };
    let names = &m.names;
    if f.input != data.input_features() {
        return Err(bad(
            "init_from",
            format!(
                "layer `{}` kernel: expected {} inputs (the data's features), the file has {} (shape {})",
                names.lstm[0],
                data.input_features(),
                f.input,
                model::error::fmt_shape(&[f.input, 4 * f.hidden])
            ),
        ));
    }
    if f.output != spec.model.output {
        return Err(bad(
            "init_from",
            format!(
                "head `{}` kernel: expected {} outputs (the data's targets, times the quantiles), the file has {} (shape {})",
                names.head,
                spec.model.output,
                f.output,
                model::error::fmt_shape(&[f.hidden, f.output])
            ),
        ));
    }
    if let Some(h) = cfg.given.hidden.filter(|&h| h != f.hidden) {
        return Err(bad(
            "hidden",
            format!(
                "layer `{}` recurrent kernel: expected {} for --hidden {h}, the file has {}",
                names.lstm[0],
                model::error::fmt_shape(&[h, 4 * h]),
                model::error::fmt_shape(&[f.hidden, 4 * f.hidden])
            ),
        ));
    }
    if let Some(l) = cfg.given.layers.filter(|&l| l != f.layers) {
        return Err(bad(
            "layers",
            format!(
                "expected {l} LSTM layers (--layers), the file has {}: {}",
                f.layers,
                names.lstm.join(", ")
            ),
        ));
    }
    if spec.model.cond != f.cond {
        return Err(bad(
            "init_from_cond",
            format!(
                "the run's initial-state projection ({:?}) and the file's ({:?}) differ",
                spec.model.cond, f.cond
            ),
        ));
    }
    spec.model.hidden = f.hidden;
    spec.model.layers = f.layers;
    spec.model.head = cfg.given.head.unwrap_or(f.head);
    Ok((m.params, path.to_path_buf()))
}

/// Binds the gRPC listener (port 0 allowed).
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, CoordError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| CoordError::io(format!("binding {addr}"), e))
}

/// Runs the job described by `cfg` until it is complete, fails or `shutdown` fires. `listener` is
/// the bound gRPC socket (bound here from `cfg.listen` when `None`; unused in-process).
pub(crate) async fn run(
    mut cfg: TrainConfig,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<Summary, CoordError> {
    let run_dir = crate::rundir::prepare(&cfg)?;
    let data = load_data(&cfg)?;
    if let Some(d) = data.series() {
        cfg.fit_series_defaults(d.len(), &d.chunks(d.spec.timesteps.max(1)));
    }
    let sequences = match &data {
        Data::Windows(d) => {
            let streams = model::stream::Streams::new(d.train.x.n, cfg.spec.batch_size, &d.name)?;
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
            streams.sequences
        }
        Data::Series(d) => {
            info!(
                series = d.len(),
                inputs = %d.spec.input_columns.join(","),
                targets = %d.spec.target_columns.join(","),
                scale = %d.spec.scale,
                val_steps = d.spec.val_steps,
                missing = %d.spec.missing,
                observed_flags = d.spec.observed_flags,
                missing_targets = d.observed.as_ref().map_or(0, |o| o.iter().filter(|&&s| !s).count()),
                input_width = d.fi,
                "series"
            );
            d.len()
        }
    };
    if cfg.patience.is_some() && !has_validation(&data) {
        return Err(CoordError::Config {
            field: "patience".into(),
            msg: "early stopping watches the validation loss, and the data has no validation part (give --val-steps K for series, x_val/y_val in an .npz)".into(),
        });
    }
    let trainer = trainer(&cfg, data)?;
    info!(
        data = %trainer.data().name(),
        sequences,
        steps_per_epoch = trainer.steps_in_epoch(),
        total_steps = trainer.total_steps(),
        params = trainer.layout().len(),
        out = %run_dir.path().display(),
        "job"
    );
    if let Some(addr) = cfg.metrics_listen {
        report::prom::install(addr)?;
        info!(%addr, "serving Prometheus metrics");
    }
    // cancelled by the reporter when a file cannot be written: the job stops at once
    let fatal = CancellationToken::new();
    // cancelled by a signal, a file that cannot be written, or the reporter when early stopping
    // ends the run (then the checkpoint of where the run stands is written, as for a signal)
    let stop = CancellationToken::new();
    // the checkpoint of where it stands is written
    let (events, reporter, status) = report::spawn(
        ReportConfig {
            out: run_dir.path().to_path_buf(),
            progress: cfg.progress,
            progress_every: cfg.progress_every,
            total_steps: trainer.total_steps(),
            start_step: trainer.cursor().global,
            batch_size: cfg.spec.batch_size,
            patience: cfg.patience,
            early: stop.clone(),
        },
        fatal.clone(),
    )?;
    if trainer.is_done() {
        info!("the run in the checkpoint is already complete; workers that join are told so");
    }
    let ui = match cfg.ui_listen {
        Some(addr) => {
            let l = bind(addr).await?;
            let at = l
                .local_addr()
                .map_err(|e| CoordError::io("reading the status page's address", e))?;
            runtime::process::say(&format!("UI http://{at}/"));
            info!(%at, "serving the status page");
            Some(tokio::spawn(crate::ui::serve(
                l,
                status.clone(),
                cfg.token.as_ref().map(|t| t.expose().to_string()),
                stop.child_token(),
            )))
        }
        None => None,
    };
    let watch = {
        let (stop, shutdown, fatal) = (stop.clone(), shutdown.clone(), fatal.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = fatal.cancelled() => {}
            }
            stop.cancel();
        })
    };
    let result = if cfg.spawn_workers == Some(0) {
        let (cfg2, stop2, tx) = (cfg.clone(), stop.clone(), events.clone());
        tokio::task::spawn_blocking(move || crate::local::run(&cfg2, trainer, &tx, &stop2))
            .await
            .map_err(|e| CoordError::JobFailed(format!("training thread panicked: {e}")))
            .and_then(|r| r)
    } else {
        let listener = match listener {
            Some(l) => l,
            None => bind(cfg.listen).await?,
        };
        serve(
            &cfg,
            trainer,
            events.clone(),
            &status,
            listener,
            stop.clone(),
        )
        .await
    };
    watch.abort();
    if let Some(ui) = ui {
        // the page keeps showing the end of the job until the process exits
        ui.abort();
    }
    // the one writer saves where an interrupted run stands, after every queued checkpoint
    let outcome = match result {
        Ok(t) => {
            if !t.is_done() && !fatal.is_cancelled() {
                let _ = events
                    .send(Event::Interrupted(Box::new(t.checkpoint())))
                    .await;
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    drop(events);
    let summary = reporter
        .await
        .map_err(|e| CoordError::JobFailed(format!("reporter panicked: {e}")))?;
    // a file that could not be written is the cause of whatever else went wrong
    let summary = summary?;
    outcome?;
    drop(run_dir);
    Ok(summary)
}

/// The gRPC server's TLS settings for `tls` (with `extra_client_ca` trusted beside the client CA).
pub(crate) fn tls_config(
    tls: Option<&TlsFiles>,
    extra_client_ca: Option<&[u8]>,
) -> Result<Option<ServerTlsConfig>, CoordError> {
    let Some(tls) = tls else { return Ok(None) };
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
        let mut roots = pem(ca, "tls_client_ca")?;
        if let Some(extra) = extra_client_ca {
            roots.push(b'\n');
            roots.extend_from_slice(extra);
        }
        c = c.client_ca_root(Certificate::from_pem(roots));
    }
    Ok(Some(c))
}

/// Serves only the gRPC health service, in plaintext, on `addr` (for kubelet probes).
pub(crate) async fn health_only(
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
            .serve_with_incoming_shutdown(runtime::net::incoming(l), shutdown.cancelled_owned())
            .await
        {
            warn!(cause = %e, "health server stopped");
        }
    }))
}

/// Serves the job until it ends or `stop` fires; returns the trainer as it stands.
async fn serve(
    cfg: &TrainConfig,
    trainer: Trainer,
    events: tokio::sync::mpsc::Sender<Event>,
    status: &report::Status,
    listener: TcpListener,
    stop: CancellationToken,
) -> Result<Trainer, CoordError> {
    let addr = listener
        .local_addr()
        .map_err(|e| CoordError::io("reading the bound address", e))?;
    let job_id = proto::security::random_id();
    let job = Job::new(trainer, cfg.job.clone());
    let shared = Arc::new(Shared::new(
        job,
        events,
        ServiceConfig {
            job_id,
            heartbeat: cfg.job.lease / 3,
            max_message_bytes: cfg.max_message_bytes,
            tls: cfg.tls.is_some(),
            link_delay: cfg.link_delay,
        },
    )?);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let server_stop = CancellationToken::new();
    let mut health_task = None;
    if let Some(a) = cfg.health_listen {
        health_task = Some(health_only(a, health.clone(), server_stop.clone()).await?);
    }
    // spawned workers get the server's trust anchors, and client certificates under mutual TLS
    let spawn_tls = match (cfg.spawn_workers, &cfg.tls) {
        (Some(k), Some(t)) if k > 0 => Some(crate::spawn::SpawnTls::new(t)?),
        _ => None,
    };
    let svc = CoordinatorServer::new(CoordinatorService::new(shared.clone()))
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let svc = InterceptedService::new(svc, CheckToken::new(cfg.token.as_ref()));
    let mut builder = runtime::net::server();
    let scheme = if let Some(t) = tls_config(
        cfg.tls.as_ref(),
        spawn_tls.as_ref().and_then(|t| t.client_ca()),
    )? {
        builder = builder.tls_config(t)?;
        "https"
    } else {
        "http"
    };
    let server = tokio::spawn(
        builder
            .add_service(health)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                runtime::net::incoming(listener),
                server_stop.clone().cancelled_owned(),
            ),
    );
    info!(%addr, tls = cfg.tls.is_some(), token = cfg.token.is_some(), workers = cfg.job.min_workers, "serving the job");

    // leases, deadlines, views and second opinions
    let ticker = {
        let (shared, stop) = (shared.clone(), server_stop.clone());
        let period =
            (cfg.job.lease / 4).clamp(Duration::from_millis(25), Duration::from_millis(250));
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = iv.tick() => shared.tick(Instant::now()).await,
                }
            }
        })
    };

    let mut workers = match cfg.spawn_workers {
        Some(k) if k > 0 => Some(crate::spawn::spawn(
            cfg,
            k,
            &format!("{scheme}://127.0.0.1:{}", addr.port()),
            spawn_tls.as_ref(),
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
                // the reporter writes the last row and the final checkpoint after the job
                // ends: say it is over once they are on disk (a failed write stops the job)
                let (done, last) = {
                    let j = shared.job();
                    (j.trainer().is_done(), j.trainer().cursor().global)
                };
                while done && status.last_checkpoint() != Some(last) && !stop.is_cancelled() {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                info!("job over; lingering until SIGTERM");
                stop.cancelled().await;
                break;
            }
            if live == 0 || at.elapsed() >= FINISH_GRACE {
                break;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {
                info!("stopping before the job is complete");
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
    shared.finish_events().await;
    drop(shared);
    drop(spawn_tls);
    if let Some(f) = spawn_failure {
        return Err(CoordError::Spawn(f.into()));
    }
    match failure {
        Some(f) => Err(CoordError::JobFailed(f)),
        None => Ok(trainer),
    }
}
