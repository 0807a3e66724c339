//! The worker's life: connect, accept peer connections, register, then follow the directive
//! stream (views, each step's work, gradient uploads, the end of the job) while the compute
//! thread computes, a heartbeat task keeps the lease, and records go back in reports, one call
//! in flight at a time (what accumulates meanwhile goes in the next one). A lost coordinator means
//! reconnect and register again (a restarted coordinator knows no old ids); an eviction means
//! wait out the back-off the coordinator names, then register again; SIGTERM means leave and
//! exit. Repeated warnings are rate-limited.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use model::config::ModelConfig;
use model::replica::{Record, Reduction, StepRecord};
use proto::convert;
use proto::step::{self as wire, DirectiveOut};
use runtime::logs::Limiter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::client::{Client, Retry, connect, fetch_blobs, send_blobs};
use crate::compute::{Computer, Due, Event, Outbox, Settings, ViewStart};
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::exchange::Exchange;
use crate::peer::{Dialer, Inbox, Link, PeerCrypto, PeerServer, PeerView};

/// How a worker's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The job is over; the coordinator's message.
    Finished(String),
    /// Stopped by a signal.
    Stopped,
}

/// The worker's health service: `NOT_SERVING` while its compute is stuck past a step's deadline,
/// so that an orchestrator restarts it.
#[derive(Debug, Clone)]
pub(crate) struct Health(Option<tonic_health::server::HealthReporter>);

impl Health {
    /// Health reported through `reporter` (or nowhere).
    pub(crate) fn new(reporter: Option<tonic_health::server::HealthReporter>) -> Self {
        Self(reporter)
    }

    async fn set(&self, serving: bool) {
        if let Some(r) = &self.0 {
            let status = if serving {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            r.set_service_status("", status).await;
        }
    }
}

/// What to do after an RPC error.
enum Next {
    /// Reconnect and register again.
    Reconnect,
    /// Register again on the same connection.
    Register,
    /// Drop what was refused and go on.
    Continue,
}

fn classify(s: &Status) -> Result<Next, WorkerError> {
    Ok(match s.code() {
        Code::Unauthenticated => {
            return Err(WorkerError::Refused(s.message().to_string()));
        }
        Code::NotFound | Code::PermissionDenied => Next::Register,
        Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::OutOfRange
        | Code::ResourceExhausted => Next::Continue,
        _ => Next::Reconnect,
    })
}

/// How long an `UNAVAILABLE` registration refusal asks to wait (an eviction back-off).
fn retry_after(s: &Status) -> Option<Duration> {
    let v = s.metadata().get("retry-after-ms")?.to_str().ok()?;
    v.parse().ok().map(Duration::from_millis)
}

fn heartbeats(
    mut client: Client,
    id: String,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(every.max(Duration::from_millis(20)));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = iv.tick() => {
                    if let Err(s) = client.heartbeat(convert::heartbeat_request(&id)).await {
                        debug!(code = ?s.code(), msg = s.message(), "heartbeat failed");
                    }
                }
            }
        }
    })
}

/// Flips health to `NOT_SERVING` while the compute thread is past its step's deadline.
fn watchdog(computer: Arc<Computer>, health: Health, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut stuck: Option<u64> = None;
        let mut iv = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = iv.tick() => {}
            }
            let busy = computer.busy();
            let late = busy.filter(|b| b.deadline.is_some_and(|d| b.since.elapsed() > d));
            match (stuck, late) {
                (None, Some(b)) => {
                    stuck = Some(b.step);
                    health.set(false).await;
                    warn!(
                        step = b.step,
                        deadline_ms = b.deadline.map_or(0, |d| d.as_millis() as u64),
                        "the computation has run past the shard's deadline; health reports NOT_SERVING"
                    );
                }
                (Some(s), l) if l.is_none_or(|b| b.step != s) => {
                    stuck = None;
                    health.set(true).await;
                }
                _ => {}
            }
        }
    });
}

/// Leaves the job (best effort, bounded).
async fn leave(client: &mut Client, id: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.leave(convert::leave_request(id)),
    )
    .await;
}

/// The address of this machine that the coordinator at `url` is reached from.
async fn local_ip_towards(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let target = tokio::net::lookup_host(authority).await.ok()?.next()?;
    let any: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = tokio::net::UdpSocket::bind(any).await.ok()?;
    s.connect(target).await.ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Binds the listener for peer connections; returns it and the address to register.
async fn bind_peer(cfg: &WorkerConfig) -> Result<(std::net::TcpListener, String), WorkerError> {
    let towards = local_ip_towards(&cfg.coordinator).await;
    let at = cfg
        .peer_listen
        .unwrap_or_else(|| SocketAddr::new(towards.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), 0));
    let bad = |msg: String| WorkerError::Config {
        field: "peer_listen".into(),
        msg,
    };
    let l = std::net::TcpListener::bind(at).map_err(|e| bad(format!("binding {at}: {e}")))?;
    let bound = l.local_addr().map_err(|e| bad(e.to_string()))?;
    let advertise = match &cfg.peer_advertise {
        Some(a)
            if a.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
        {
            a.clone()
        }
        Some(host) => format!("{host}:{}", bound.port()),
        None if bound.ip().is_unspecified() => SocketAddr::new(
            towards.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            bound.port(),
        )
        .to_string(),
        None => bound.to_string(),
    };
    Ok((l, advertise))
}

type ReportCall = Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send>>;

/// Longest a record waits to be reported with others.
const REPORT_DELAY: Duration = Duration::from_millis(2);

/// What the peer connections of one registration share.
struct Peers {
    server: PeerServer,
    inbox: Arc<Inbox>,
    current: Arc<AtomicU64>,
    dialer: Dialer,
}

impl Peers {
    /// Starts view `v`: the members of `v` may connect, the links to them are dialed.
    fn start(&mut self, v: &model::replica::View, model: &ModelConfig) -> Exchange {
        let len = model::params::ParamLayout::new(model).len();
        self.current.store(v.id, Ordering::Release);
        self.inbox.reset(v.id, v.start_step);
        self.server.announce(Some(Arc::new(PeerView {
            id: v.id,
            me: v.member,
            tokens: v.members.iter().map(|m| m.pair_token.clone()).collect(),
            len,
            chunks: v.chunks,
            scatter_gather: v.reduction == Reduction::ScatterGather,
        })));
        let links = v
            .members
            .iter()
            .map(|m| {
                (m.index != v.member)
                    .then(|| Link::open(&self.dialer, &m.address, v.id, v.member, &m.pair_token))
            })
            .collect();
        Exchange {
            view: v.id,
            me: v.member,
            members: v.members.len(),
            len,
            chunks: v.chunks,
            reduction: v.reduction,
            links,
            inbox: self.inbox.clone(),
            current: self.current.clone(),
        }
    }

    /// No view: every wait ends, and no member may connect.
    fn stop(&mut self) {
        self.current.store(u64::MAX, Ordering::Release);
        self.server.announce(None);
        self.inbox.reset(u64::MAX, 0);
    }
}

/// Runs the worker until the job is over or `shutdown` fires.
pub(crate) async fn run(
    cfg: WorkerConfig,
    health: Health,
    shutdown: CancellationToken,
) -> Result<Outcome, WorkerError> {
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let outbox = Arc::new(Outbox::default());
    let computer = Arc::new(Computer::start(
        cfg.device,
        Settings {
            engine: cfg.engine,
            threads: cfg.threads,
            fault: cfg.fault,
            throttle: cfg.throttle,
        },
        ev_tx,
        outbox.clone(),
    )?);
    info!(name = %cfg.name, device = computer.device(), url = %cfg.coordinator, "worker starting");
    watchdog(computer.clone(), health, shutdown.clone());
    let limiter = Limiter::new(Duration::from_secs(10));
    let mut retry = Retry::new(cfg.give_up);
    'connect: loop {
        let mut client = match connect(&cfg).await {
            Ok(c) => c,
            Err(WorkerError::Transport(cause)) => {
                if !retry.failed(&cfg.coordinator, &cause, &shutdown).await? {
                    return Ok(Outcome::Stopped);
                }
                continue 'connect;
            }
            Err(e) => return Err(e),
        };
        'register: loop {
            let (listener, peer_address) = bind_peer(&cfg).await?;
            let reg = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
                r = client.register(convert::register_request(&cfg.name, computer.device(), &peer_address)) => r,
            };
            let reg = match reg {
                Ok(r) => convert::registered(r.into_inner())
                    .map_err(|e| WorkerError::Refused(e.to_string()))?,
                Err(s) if s.code() == Code::Unavailable && retry_after(&s).is_some() => {
                    let wait = retry_after(&s).unwrap_or_default();
                    warn!(
                        reason = s.message(),
                        wait_ms = wait.as_millis() as u64,
                        "evicted by the coordinator; registering again after the back-off"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue 'register;
                }
                Err(s) if s.code() == Code::ResourceExhausted => {
                    if !retry
                        .failed(&cfg.coordinator, s.message(), &shutdown)
                        .await?
                    {
                        return Ok(Outcome::Stopped);
                    }
                    continue 'register;
                }
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::InvalidArgument) => {
                    return Err(WorkerError::Refused(s.message().to_string()));
                }
                Err(s) => match classify(&s)? {
                    Next::Reconnect => {
                        let cause = format!(
                            "registration failed: {:?}: {} (a plaintext http:// URL against a TLS coordinator fails like this)",
                            s.code(),
                            s.message()
                        );
                        if !retry.failed(&cfg.coordinator, &cause, &shutdown).await? {
                            return Ok(Outcome::Stopped);
                        }
                        continue 'connect;
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue 'register;
                    }
                },
            };
            retry.success();
            let model = reg.model.clone();
            let engine = computer.set_model(model.clone()).await?;
            info!(job = %reg.job_id, %engine, peer = %peer_address, "registered");
            let limit = reg
                .max_message_bytes
                .map_or(cfg.max_message_bytes, |n| n.min(cfg.max_message_bytes));
            let id = reg.worker_id;
            let stop = CancellationToken::new();
            let _stop = stop.clone().drop_guard();
            let crypto = match &reg.peer_tls {
                Some(t) => Some(PeerCrypto::new(t).map_err(|msg| WorkerError::Config {
                    field: "peer_tls".into(),
                    msg,
                })?),
                None => None,
            };
            let inbox = Arc::new(Inbox::default());
            let mut peers = Peers {
                server: PeerServer::start(
                    listener,
                    crypto.clone(),
                    inbox.clone(),
                    cfg.max_message_bytes,
                    cfg.link_delay,
                )
                .map_err(WorkerError::Compute)?,
                inbox,
                current: Arc::new(AtomicU64::new(u64::MAX)),
                dialer: Dialer { crypto },
            };
            let hb = heartbeats(client.clone(), id.clone(), reg.heartbeat, stop.clone());
            let follow = tokio::select! {
                _ = shutdown.cancelled() => {
                    leave(&mut client, &id).await;
                    return Ok(Outcome::Stopped);
                }
                r = client.follow(wire::follow_request(&id)) => r,
            };
            let mut stream = match follow {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    stop.cancel();
                    let _ = hb.await;
                    match classify(&s)? {
                        Next::Reconnect => continue 'connect,
                        _ => continue 'register,
                    }
                }
            };
            let mut depth = 1usize;
            let mut in_flight: Option<ReportCall> = None;
            let next = loop {
                // one report call at a time, carrying every record of the newest view (see
                // `Outbox` for when they are due)
                let due = outbox.due(REPORT_DELAY, (depth / 2).max(1));
                if in_flight.is_none() && due == Due::Now {
                    let pending = outbox.take();
                    let view = pending.last().map(|(v, _)| *v).unwrap_or_default();
                    let records: Vec<StepRecord> = pending
                        .into_iter()
                        .filter(|(v, _)| *v == view)
                        .map(|(_, r)| r)
                        .collect();
                    for r in &records {
                        if let Record::Failure(reason) = &r.record
                            && let Some(n) = limiter.check("failed", Instant::now())
                        {
                            warn!(step = r.step, cause = %reason, repeats_not_logged = n, "could not compute the step; telling the coordinator");
                        }
                    }
                    let mut c = client.clone();
                    let id2 = id.clone();
                    let delay = cfg.link_delay;
                    in_flight = Some(Box::pin(async move {
                        let mut req = wire::report_request(&id2, view, &records);
                        send_blobs(&mut c, &id2, &mut req, limit, proto::blob::report_tensors)
                            .await?;
                        let r = c.report(req).await.map(|_| ());
                        delay.hold(Instant::now()).await;
                        r
                    }));
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        peers.stop();
                        leave(&mut client, &id).await;
                        info!("left the job");
                        return Ok(Outcome::Stopped);
                    }
                    () = tokio::time::sleep_until(match due { Due::At(t) => t, _ => tokio::time::Instant::now() }), if matches!(due, Due::At(_)) && in_flight.is_none() => {}
                    r = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                        in_flight = None;
                        if let Err(s) = r {
                            match classify(&s)? {
                                Next::Continue => {
                                    if s.code() != Code::FailedPrecondition
                                        && let Some(n) = limiter.check("refused", Instant::now())
                                    {
                                        warn!(code = ?s.code(), msg = s.message(), repeats_not_logged = n, "report refused");
                                    }
                                }
                                other => break other,
                            }
                        }
                    }
                    () = outbox.ready() => {}
                    ev = events.recv() => match ev {
                        Some(Event::Resync(why)) => {
                            warn!(%why, "registering again to start from the committed state");
                            peers.stop();
                            leave(&mut client, &id).await;
                            break Next::Register;
                        }
                        None => return Err(WorkerError::Compute("stopped".into())),
                    },
                    msg = stream.message() => match msg {
                        Ok(Some(d)) => match wire::directive_in(held(cfg.link_delay, d).await) {
                            Ok(DirectiveOut::Finished(message)) => {
                                peers.stop();
                                info!(%message, "job finished");
                                return Ok(Outcome::Finished(message));
                            }
                            Ok(DirectiveOut::Wait(reason)) => debug!(%reason, "waiting"),
                            Ok(DirectiveOut::Upload(step)) => computer.upload(step)?,
                            Ok(DirectiveOut::View(mut v)) => {
                                let read = fetch_blobs(&mut client, &id, v.as_mut(), proto::blob::view_tensors)
                                    .await
                                    .and_then(|()| wire::view_in(&v, &model).map_err(|e| e.to_string()));
                                match read {
                                    Ok(view) => {
                                        info!(view = view.id, step = view.start_step, member = view.member, members = view.members.len(), "computing in a new view");
                                        depth = view.depth;
                                        let exchange = peers.start(&view, &model);
                                        computer.view(ViewStart { view, exchange })?;
                                    }
                                    Err(e) => {
                                        warn!(cause = %e, "a view this worker cannot read");
                                        peers.stop();
                                        outbox.put(v.id, StepRecord {
                                            step: v.start_step,
                                            record: Record::Failure(format!("a view it cannot read: {e}")),
                                        }, 1);
                                    }
                                }
                            }
                            Ok(DirectiveOut::Work(mut a)) => {
                                let read = fetch_blobs(&mut client, &id, a.as_mut(), proto::blob::assignment_tensors)
                                    .await
                                    .and_then(|()| convert::work(&a, &model).map_err(|e| e.to_string()));
                                match read {
                                    Ok(w) => computer.work(w)?,
                                    Err(e) => {
                                        warn!(step = a.step, cause = %e, "work this worker cannot read");
                                        outbox.put(a.view, StepRecord {
                                            step: a.step,
                                            record: Record::Failure(format!("a malformed assignment: {e}")),
                                        }, 1);
                                    }
                                }
                            }
                            Err(e) => warn!(cause = %e, "a directive from the coordinator it cannot read"),
                        },
                        Ok(None) => {
                            warn!("the coordinator closed the directive stream; reconnecting");
                            break Next::Reconnect;
                        }
                        Err(s) => {
                            warn!(code = ?s.code(), msg = s.message(), "lost the directive stream");
                            break classify(&s)?;
                        }
                    },
                }
            };
            peers.stop();
            stop.cancel();
            let _ = hb.await;
            match next {
                Next::Register | Next::Continue => continue 'register,
                Next::Reconnect => continue 'connect,
            }
        }
    }
}

/// `value` once the link's simulated delay has passed since it arrived (now).
async fn held<T>(delay: runtime::net::LinkDelay, value: T) -> T {
    delay.hold(Instant::now()).await;
    value
}
