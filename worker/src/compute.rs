//! The compute thread: owns the engine (Burn and the fused kernels run off the async runtime)
//! and turns decoded assignments into results; talks to the session over channels.

use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use model::config::ModelConfig;
use model::device::{Compute, DeviceChoice, make_engine, resolve};
use model::engine::{Engine, EngineKind, TrainOut};
use proto::convert::Work;
use tokio::sync::oneshot;

use crate::error::WorkerError;

/// A computed shard.
#[derive(Debug)]
pub(crate) struct Done {
    /// Engine output.
    pub out: TrainOut,
    /// Milliseconds spent.
    pub ms: f64,
}

enum Msg {
    Model(ModelConfig, oneshot::Sender<Result<String, String>>),
    Step(Box<Work>, oneshot::Sender<Result<Done, String>>),
}

/// Handle to the compute thread.
#[derive(Debug)]
pub(crate) struct Computer {
    tx: std_mpsc::Sender<Msg>,
    device: String,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Model(..) => "Model",
            Msg::Step(..) => "Step",
        })
    }
}

impl Computer {
    /// Resolves the device (a missing device is an error here, before joining any job) and starts
    /// the thread.
    pub(crate) fn start(
        device: DeviceChoice,
        engine: EngineKind,
        threads: usize,
        hang_from: Option<u64>,
    ) -> Result<Self, WorkerError> {
        let compute = resolve(device)?;
        let desc = format!("{} {engine}", compute.describe());
        let (tx, rx) = std_mpsc::channel::<Msg>();
        std::thread::Builder::new()
            .name("compute".into())
            .spawn(move || serve(rx, compute, engine, threads, hang_from))
            .map_err(|e| WorkerError::Compute(e.to_string()))?;
        Ok(Self { tx, device: desc })
    }

    /// Device and engine, for registration.
    pub(crate) fn device(&self) -> &str {
        &self.device
    }

    /// Builds the engine for `cfg` (kept until a different model arrives).
    pub(crate) async fn set_model(&self, cfg: ModelConfig) -> Result<String, WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Model(cfg, tx))
            .map_err(|_| WorkerError::Compute("stopped".into()))?;
        rx.await
            .map_err(|_| WorkerError::Compute("stopped".into()))?
            .map_err(WorkerError::Compute)
    }

    /// Computes one shard.
    pub(crate) async fn run(&self, work: Work) -> Result<Done, WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Step(Box::new(work), tx))
            .map_err(|_| WorkerError::Compute("stopped".into()))?;
        rx.await
            .map_err(|_| WorkerError::Compute("stopped".into()))?
            .map_err(WorkerError::Compute)
    }
}

fn serve(
    rx: std_mpsc::Receiver<Msg>,
    compute: Compute,
    kind: EngineKind,
    threads: usize,
    hang_from: Option<u64>,
) {
    let mut current: Option<(ModelConfig, Box<dyn Engine>)> = None;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Model(cfg, reply) => {
                if current.as_ref().is_some_and(|(c, _)| *c == cfg) {
                    let _ = reply.send(Ok(current
                        .as_ref()
                        .map(|(_, e)| e.describe())
                        .unwrap_or_default()));
                    continue;
                }
                let r = make_engine(kind, &compute, &cfg, threads).map(|e| {
                    let d = e.describe();
                    current = Some((cfg, e));
                    d
                });
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Msg::Step(work, reply) => {
                let Some((cfg, engine)) = current.as_mut() else {
                    let _ = reply.send(Err("no model set".into()));
                    continue;
                };
                if hang_from.is_some_and(|s| work.step >= s) {
                    // an injected wedged device: never answers (see `--fault hang:STEP`)
                    loop {
                        std::thread::park();
                    }
                }
                let t0 = Instant::now();
                let r = work
                    .data
                    .compute(engine.as_mut(), cfg, &work.params)
                    .map(|out| Done {
                        out,
                        ms: t0.elapsed().as_secs_f64() * 1e3,
                    })
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
        }
    }
}
