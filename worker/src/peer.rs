//! The peer transport: the members of a view send each other gradient chunks over direct TCP
//! connections (TLS under a TLS job), one per ordered pair of members, framed as
//! `proto/carry/v1/coordinator.proto` describes at `PeerFrame`.
//!
//! A gradient sum is one or two message delays on every step's critical path, so this path has no
//! async runtime and no RPC dispatch in it: the compute thread writes each frame to the socket
//! itself, and one thread per incoming connection reads frames into the [`Inbox`], where the
//! compute thread waits for the chunks it needs.
//!
//! - [`PeerServer`] accepts connections; each must open with a `PeerHello` for this worker's
//!   current view (it waits briefly for a view it has not heard of yet, since the coordinator's
//!   directives reach the members at slightly different times), from another member of it, with
//!   the pair token the view gave those two, compared in constant time; one connection per member
//!   and view. Every chunk is checked for its step, phase, index, size and finiteness; one that
//!   does not fit closes the connection and is recorded as that member's fault.
//! - A [`Link`] is this worker's connection to one other member in one view, dialed in the
//!   background when the view starts (with retries until the view ends); a send waits for it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use proto::convert::PeerTls;
use proto::pb;
use proto::step::{PeerChunk, Phase, frame, peer_chunk_in, read_frame};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use subtle::ConstantTimeEq;
use tracing::{debug, warn};

/// How long a connection for a view this worker has not heard of yet waits for it.
const VIEW_WAIT: Duration = Duration::from_secs(5);
/// Steps past the one being summed whose chunks may already arrive.
const STEPS_AHEAD: u64 = 2;
/// How long a dial keeps trying.
const DIAL_FOR: Duration = Duration::from_secs(60);

/// What this worker's current view says about its peers.
#[derive(Debug, Clone)]
pub(crate) struct PeerView {
    /// The view.
    pub(crate) id: u64,
    /// This worker's index.
    pub(crate) me: usize,
    /// The pair token of each member (empty for this worker).
    pub(crate) tokens: Vec<Vec<u8>>,
    /// Parameters and chunks, for checking chunk sizes.
    pub(crate) len: usize,
    pub(crate) chunks: usize,
    /// Under scatter-gather only a chunk's owner sends its sum.
    pub(crate) scatter_gather: bool,
}

#[derive(Debug, Default)]
struct InboxState {
    view: u64,
    /// The step being summed; chunks of earlier steps are refused.
    low: u64,
    items: HashMap<(u64, Phase, usize, usize), Vec<f32>>,
    /// Members that sent something unusable in this view, and what.
    faults: Vec<(usize, String)>,
    /// Peer bytes received per step.
    received: HashMap<u64, u64>,
    /// Members with an open connection in this view, and a handle to close it.
    streams: Vec<(usize, TcpStream)>,
}

/// Chunks received from other members, until the compute thread takes them.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    arrived: Condvar,
}

/// Why a wait in the inbox ended without the chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Missing {
    /// The view is over.
    ViewOver,
    /// A member sent something unusable.
    Fault {
        /// Its index.
        member: usize,
        /// What.
        reason: String,
    },
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts view `view` at step `start`: everything of earlier views is dropped, and their
    /// connections closed.
    pub(crate) fn reset(&self, view: u64, start: u64) {
        let old = {
            let mut s = self.lock();
            let old = std::mem::take(&mut s.streams);
            *s = InboxState {
                view,
                low: start,
                ..InboxState::default()
            };
            old
        };
        for (_, st) in old {
            let _ = st.shutdown(Shutdown::Both);
        }
        self.arrived.notify_all();
    }

    /// The compute thread sums step `step` of view `view` now: earlier steps' leftovers go.
    /// Nothing changes once the session has moved the inbox to a newer view: the compute thread
    /// can still be finishing a step of the old one, and must not move the new view's window
    /// past the steps its members are about to send.
    pub(crate) fn advance(&self, view: u64, step: u64) {
        let mut s = self.lock();
        if s.view != view {
            return;
        }
        s.low = step;
        s.items.retain(|k, _| k.0 >= step);
        s.received.retain(|k, _| *k >= step);
    }

    /// Peer bytes received for `step` so far.
    pub(crate) fn received(&self, step: u64) -> u64 {
        self.lock().received.get(&step).copied().unwrap_or(0)
    }

    fn fault(&self, view: u64, member: usize, reason: String) {
        let mut s = self.lock();
        if s.view == view {
            s.faults.push((member, reason));
        }
        drop(s);
        self.arrived.notify_all();
    }

    fn put(&self, view: u64, from: usize, c: PeerChunk, bytes: u64) -> Result<(), String> {
        let mut s = self.lock();
        if s.view != view {
            return Err(format!("view {view} is over"));
        }
        if c.step < s.low || c.step > s.low + STEPS_AHEAD {
            return Err(format!(
                "a chunk of step {} while this worker sums step {} (at most {STEPS_AHEAD} ahead)",
                c.step, s.low
            ));
        }
        let key = (c.step, c.phase, c.chunk, from);
        if s.items.contains_key(&key) {
            return Err(format!(
                "chunk {} of step {} ({:?}) twice",
                c.chunk, c.step, c.phase
            ));
        }
        *s.received.entry(c.step).or_default() += bytes;
        s.items.insert(key, c.values);
        drop(s);
        self.arrived.notify_all();
        Ok(())
    }

    /// Waits for chunk `(step, phase, chunk)` from member `from`, while `current()` says view
    /// `view` is still on.
    pub(crate) fn take(
        &self,
        view: u64,
        key: (u64, Phase, usize, usize),
        current: &dyn Fn() -> u64,
    ) -> Result<Vec<f32>, Missing> {
        let mut s = self.lock();
        let waited = Instant::now();
        let mut logged = false;
        loop {
            if s.view != view || current() != view {
                return Err(Missing::ViewOver);
            }
            if let Some((member, reason)) = s.faults.first() {
                return Err(Missing::Fault {
                    member: *member,
                    reason: reason.clone(),
                });
            }
            if let Some(v) = s.items.remove(&key) {
                return Ok(v);
            }
            if !logged && waited.elapsed() > Duration::from_secs(2) {
                logged = true;
                debug!(
                    step = key.0,
                    chunk = key.2,
                    member = key.3,
                    "still waiting for a member's chunk"
                );
            }
            s = self
                .arrived
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Reads and writes of one peer connection, in plaintext or TLS.
trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A connection read through a buffer (writes go straight through).
struct Buffered(std::io::BufReader<Box<dyn Conn>>);

impl Read for Buffered {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.get_mut().flush()
    }
}

/// TLS of the peer connections: the server's identity and the CA clients check it against.
#[derive(Clone)]
pub(crate) struct PeerCrypto {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PeerCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCrypto")
    }
}

impl PeerCrypto {
    /// The TLS settings of `t` (the identity and CA the coordinator issued).
    pub(crate) fn new(t: &PeerTls) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&t.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("peer certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&t.key).map_err(|e| format!("peer key: {e}"))?;
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("peer identity: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&t.ca) {
            roots
                .add(c.map_err(|e| format!("peer CA: {e}"))?)
                .map_err(|e| format!("peer CA: {e}"))?;
        }
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

#[derive(Debug)]
struct ServerShared {
    view: Mutex<Option<Arc<PeerView>>>,
    announced: Condvar,
    inbox: Arc<Inbox>,
    crypto: Option<PeerCrypto>,
    max_frame: usize,
    stop: AtomicBool,
    /// Benchmark aid: every frame is held this long after it arrives.
    delay: runtime::net::LinkDelay,
}

/// Accepts this worker's peer connections.
#[derive(Debug)]
pub(crate) struct PeerServer {
    shared: Arc<ServerShared>,
    address: std::net::SocketAddr,
}

impl PeerServer {
    /// Accepts on `listener`, delivering chunks into `inbox`, each `delay` after it arrives.
    pub(crate) fn start(
        listener: TcpListener,
        crypto: Option<PeerCrypto>,
        inbox: Arc<Inbox>,
        max_frame: usize,
        delay: runtime::net::LinkDelay,
    ) -> Result<Self, String> {
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(ServerShared {
            view: Mutex::new(None),
            announced: Condvar::new(),
            inbox,
            crypto,
            max_frame,
            stop: AtomicBool::new(false),
            delay,
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("peer-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    let _ = std::thread::Builder::new()
                        .name("peer-read".into())
                        .spawn(move || {
                            if let Err(e) = serve_conn(&s, conn) {
                                debug!(cause = %e, "peer connection ended");
                            }
                        });
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Self { shared, address })
    }

    /// Admits the members of `v` from now on (`None`: nobody).
    pub(crate) fn announce(&self, v: Option<Arc<PeerView>>) {
        *self.shared.view.lock().unwrap_or_else(|p| p.into_inner()) = v;
        self.shared.announced.notify_all();
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.announce(None);
        // wake the blocking accept
        let mut a = self.address;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&a, Duration::from_millis(200));
    }
}

/// The view a hello for view `id` is admitted to, waiting briefly for it to be announced.
fn view_for(s: &ServerShared, id: u64) -> Result<Arc<PeerView>, String> {
    let deadline = Instant::now() + VIEW_WAIT;
    let mut v = s.view.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(cur) = v.as_ref()
            && cur.id >= id
        {
            return if cur.id == id {
                Ok(cur.clone())
            } else {
                Err(format!(
                    "view {id} is over; this worker is in view {}",
                    cur.id
                ))
            };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.stop.load(Ordering::Acquire) {
            return Err(format!("this worker is not in view {id}"));
        }
        v = s
            .announced
            .wait_timeout(v, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn serve_conn(s: &ServerShared, tcp: TcpStream) -> Result<(), String> {
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let handle = tcp.try_clone().map_err(|e| e.to_string())?;
    let conn: Box<dyn Conn> = match &s.crypto {
        Some(c) => {
            let tls = rustls::ServerConnection::new(c.server.clone()).map_err(|e| e.to_string())?;
            Box::new(rustls::StreamOwned::new(tls, tcp))
        }
        None => Box::new(tcp),
    };
    // frames are read whole from a buffer: one read call per frame or fewer, not three
    let mut conn = Buffered(std::io::BufReader::with_capacity(256 << 10, conn));
    let hello = match read_frame(&mut conn, 4096)?.and_then(|f| f.kind) {
        Some(pb::peer_frame::Kind::Hello(h)) => h,
        _ => return Err("expected a PeerHello first".into()),
    };
    let refuse = |conn: &mut Buffered, why: String| {
        let f = frame(&pb::PeerFrame {
            kind: Some(pb::peer_frame::Kind::Welcome(pb::PeerWelcome {
                refusal: why.clone(),
            })),
        });
        let _ = conn.write_all(&f).and_then(|()| conn.flush());
        Err(why)
    };
    if hello.protocol != proto::PROTOCOL_VERSION {
        return refuse(
            &mut conn,
            format!(
                "protocol version mismatch: this worker speaks {}, the dialer {}",
                proto::PROTOCOL_VERSION,
                hello.protocol
            ),
        );
    }
    let v = match view_for(s, hello.view) {
        Ok(v) => v,
        Err(why) => return refuse(&mut conn, why),
    };
    let from = hello.member as usize;
    let expected = v.tokens.get(from).filter(|t| from != v.me && !t.is_empty());
    let ok = expected.is_some_and(|t| bool::from(t.as_slice().ct_eq(&hello.pair_token)));
    if !ok {
        return refuse(
            &mut conn,
            "expected the pair token of a member of this view".into(),
        );
    }
    {
        let mut st = s.inbox.lock();
        if st.view != v.id {
            drop(st);
            return refuse(&mut conn, format!("view {} is over", v.id));
        }
        if st.streams.iter().any(|(m, _)| *m == from) {
            drop(st);
            return refuse(
                &mut conn,
                format!("member {from} has a connection in view {} already", v.id),
            );
        }
        st.streams.push((from, handle));
    }
    let welcome = frame(&pb::PeerFrame {
        kind: Some(pb::peer_frame::Kind::Welcome(pb::PeerWelcome::default())),
    });
    conn.write_all(&welcome)
        .and_then(|()| conn.flush())
        .map_err(|e| e.to_string())?;
    let id = v.id;
    let end = loop {
        let f = match read_frame(&mut conn, s.max_frame) {
            Ok(Some(f)) => {
                s.delay.hold_sync(Instant::now());
                f
            }
            Ok(None) => break Ok(()),
            Err(e) => {
                // a connection closed at a view's end reads as an error too
                if s.inbox.lock().view == id {
                    s.inbox.fault(id, from, format!("an unreadable frame: {e}"));
                }
                break Err(e);
            }
        };
        let bytes = 5 + prost::Message::encoded_len(&f) as u64;
        let Some(pb::peer_frame::Kind::Chunk(c)) = f.kind else {
            let why = "expected chunks after the hello".to_string();
            s.inbox.fault(id, from, why.clone());
            break Err(why);
        };
        let chunk = match peer_chunk_in(&c, v.len, v.chunks) {
            Ok(chunk) => chunk,
            Err(e) => {
                let why = e.to_string();
                s.inbox.fault(id, from, why.clone());
                break Err(why);
            }
        };
        if v.scatter_gather && chunk.phase == Phase::Reduced && chunk.chunk % v.tokens.len() != from
        {
            let why = format!(
                "the sum of chunk {} from member {from}, which does not own it",
                chunk.chunk
            );
            s.inbox.fault(id, from, why.clone());
            break Err(why);
        }
        if let Err(why) = s.inbox.put(id, from, chunk, bytes) {
            if !why.contains("is over") {
                s.inbox.fault(id, from, why.clone());
            }
            break Err(why);
        }
    };
    let mut st = s.inbox.lock();
    if st.view == id {
        st.streams.retain(|(m, _)| *m != from);
    }
    end
}

/// How this worker connects to other members.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    /// TLS, when the job uses it.
    pub(crate) crypto: Option<PeerCrypto>,
}

enum LinkState {
    Dialing,
    Up(Box<dyn Conn>),
    Down(String),
}

/// This worker's connection to one other member in one view.
pub(crate) struct Link {
    state: Arc<(Mutex<LinkState>, Condvar)>,
    /// Closes the connection (and ends a dial) when the view ends.
    handle: Arc<Mutex<Option<TcpStream>>>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

impl Link {
    /// Dials the member at `address` for view `view` (this worker is `me`) with the pair token
    /// `token`, in the background.
    pub(crate) fn open(dialer: &Dialer, address: &str, view: u64, me: usize, token: &[u8]) -> Self {
        let state = Arc::new((Mutex::new(LinkState::Dialing), Condvar::new()));
        let handle = Arc::new(Mutex::new(None));
        let closed = Arc::new(AtomicBool::new(false));
        let (st, h, c) = (state.clone(), handle.clone(), closed.clone());
        let (dialer, address, token) = (dialer.clone(), address.to_string(), token.to_vec());
        let _ = std::thread::Builder::new()
            .name("peer-dial".into())
            .spawn(move || {
                let r = dial(&dialer, &address, view, me, &token, &h, &c);
                if let Err(e) = &r {
                    debug!(peer = %address, view, cause = %e, "could not connect to a peer");
                }
                let (lock, cv) = &*st;
                *lock.lock().unwrap_or_else(|p| p.into_inner()) = match r {
                    Ok(conn) => LinkState::Up(conn),
                    Err(e) => LinkState::Down(e),
                };
                cv.notify_all();
            });
        Self {
            state,
            handle,
            closed,
        }
    }

    /// Writes a frame, waiting for the connection while `live()` holds; returns the bytes
    /// written, or why not.
    pub(crate) fn send(&self, f: &[u8], live: &dyn Fn() -> bool) -> Result<u64, String> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &mut *s {
                LinkState::Up(conn) => {
                    return match conn.write_all(f).and_then(|()| conn.flush()) {
                        Ok(()) => Ok(f.len() as u64),
                        Err(e) => {
                            let why = e.to_string();
                            *s = LinkState::Down(why.clone());
                            Err(why)
                        }
                    };
                }
                LinkState::Down(why) => return Err(why.clone()),
                LinkState::Dialing => {
                    if !live() {
                        return Err("the view is over".into());
                    }
                    s = cv
                        .wait_timeout(s, Duration::from_millis(50))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        if let Some(t) = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.shutdown(Shutdown::Both);
        }
    }
}

fn dial(
    dialer: &Dialer,
    address: &str,
    view: u64,
    me: usize,
    token: &[u8],
    handle: &Mutex<Option<TcpStream>>,
    closed: &AtomicBool,
) -> Result<Box<dyn Conn>, String> {
    use std::net::ToSocketAddrs;
    let started = Instant::now();
    let mut delay = Duration::from_millis(10);
    let tcp = loop {
        if closed.load(Ordering::Acquire) {
            return Err("the view is over".into());
        }
        let attempt = address
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| format!("`{address}` has no address"))
            })
            .and_then(|a| {
                TcpStream::connect_timeout(&a, Duration::from_secs(5)).map_err(|e| e.to_string())
            });
        match attempt {
            Ok(t) => break t,
            Err(e) if started.elapsed() > DIAL_FOR => return Err(format!("connecting: {e}")),
            Err(e) => {
                debug!(peer = %address, view, cause = %e, "a dial failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    };
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    *handle.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(tcp.try_clone().map_err(|e| e.to_string())?);
    let mut conn: Box<dyn Conn> = match &dialer.crypto {
        Some(c) => {
            let name = ServerName::try_from(proto::convert::PEER_TLS_NAME.to_string())
                .map_err(|e| e.to_string())?;
            let tls =
                rustls::ClientConnection::new(c.client.clone(), name).map_err(|e| e.to_string())?;
            Box::new(rustls::StreamOwned::new(tls, tcp))
        }
        None => Box::new(tcp),
    };
    let hello = frame(&pb::PeerFrame {
        kind: Some(pb::peer_frame::Kind::Hello(pb::PeerHello {
            protocol: proto::PROTOCOL_VERSION,
            view,
            member: me as u32,
            pair_token: token.to_vec().into(),
        })),
    });
    conn.write_all(&hello)
        .and_then(|()| conn.flush())
        .map_err(|e| e.to_string())?;
    match read_frame(&mut conn, 64 << 10)?.and_then(|f| f.kind) {
        Some(pb::peer_frame::Kind::Welcome(w)) if w.refusal.is_empty() => Ok(conn),
        Some(pb::peer_frame::Kind::Welcome(w)) => {
            warn!(peer = %address, view, refusal = %w.refusal, "a peer refused the connection");
            Err(w.refusal)
        }
        _ => Err("expected a PeerWelcome".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(step: u64, k: usize) -> PeerChunk {
        PeerChunk {
            step,
            phase: Phase::Contribution,
            chunk: k,
            values: vec![1.0],
        }
    }

    #[test]
    fn a_step_of_an_ended_view_does_not_move_the_next_views_window() {
        // the session starts view 4 at step 2 while the compute thread, still in view 3,
        // starts summing step 3: view 4's members then send step 2, which must be taken
        let inbox = Inbox::default();
        inbox.reset(3, 0);
        inbox.advance(3, 2);
        inbox.reset(4, 2);
        inbox.advance(3, 3);
        inbox.put(4, 1, chunk(2, 0), 8).unwrap();
        inbox.advance(4, 2);
        assert_eq!(
            inbox
                .take(4, (2, Phase::Contribution, 0, 1), &|| 4)
                .unwrap(),
            [1.0]
        );
    }

    #[test]
    fn the_inbox_hands_out_what_arrived_and_refuses_the_rest() {
        let inbox = Inbox::default();
        inbox.reset(3, 10);
        inbox.put(3, 1, chunk(10, 0), 8).unwrap();
        assert!(
            inbox
                .put(3, 1, chunk(10, 0), 8)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            inbox
                .put(3, 1, chunk(9, 0), 8)
                .unwrap_err()
                .contains("step 9")
        );
        assert!(
            inbox
                .put(3, 1, chunk(13, 0), 8)
                .unwrap_err()
                .contains("ahead")
        );
        assert!(
            inbox
                .put(2, 1, chunk(10, 1), 8)
                .unwrap_err()
                .contains("over")
        );
        let now = || 3;
        assert_eq!(
            inbox
                .take(3, (10, Phase::Contribution, 0, 1), &now)
                .unwrap(),
            vec![1.0]
        );
        assert_eq!(inbox.received(10), 8);
        inbox.fault(3, 2, "bad".into());
        assert_eq!(
            inbox.take(3, (10, Phase::Contribution, 1, 1), &now),
            Err(Missing::Fault {
                member: 2,
                reason: "bad".into()
            })
        );
        inbox.reset(4, 11);
        let later = || 5;
        assert_eq!(
            inbox.take(4, (11, Phase::Contribution, 0, 1), &later),
            Err(Missing::ViewOver)
        );
    }

    fn view(id: u64, me: usize, tokens: Vec<Vec<u8>>) -> Arc<PeerView> {
        Arc::new(PeerView {
            id,
            me,
            tokens,
            len: 4,
            chunks: 1,
            scatter_gather: false,
        })
    }

    #[test]
    fn members_connect_with_their_pair_token_and_strangers_are_refused() {
        let inbox = Arc::new(Inbox::default());
        inbox.reset(7, 0);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server =
            PeerServer::start(l, None, inbox.clone(), 1 << 20, Default::default()).unwrap();
        server.announce(Some(view(7, 1, vec![b"tok-01".to_vec(), vec![]])));
        let dialer = Dialer { crypto: None };
        let live = || true;
        // a wrong token: refused
        let bad = Link::open(&dialer, &addr, 7, 0, b"guess");
        let c = proto::step::chunk_frame(proto::step::peer_chunk(
            0,
            Phase::Contribution,
            0,
            &[1.0; 4],
        ));
        assert!(bad.send(&c, &live).unwrap_err().contains("pair token"));
        // the member: admitted, and its chunk arrives
        let good = Link::open(&dialer, &addr, 7, 0, b"tok-01");
        good.send(&c, &live).unwrap();
        let now = || 7;
        assert_eq!(
            inbox.take(7, (0, Phase::Contribution, 0, 0), &now).unwrap(),
            vec![1.0; 4]
        );
        // a second connection of the same member: refused
        let twice = Link::open(&dialer, &addr, 7, 0, b"tok-01");
        assert!(twice.send(&c, &live).unwrap_err().contains("already"));
        // a chunk of the wrong size is the sender's fault
        let wrong = proto::step::chunk_frame(proto::step::peer_chunk(
            0,
            Phase::Contribution,
            0,
            &[1.0; 3],
        ));
        good.send(&wrong, &live).unwrap();
        match inbox.take(7, (0, Phase::Contribution, 0, 0), &now) {
            Err(Missing::Fault { member: 0, reason }) => {
                assert!(reason.contains("expected shape (4,)"), "{reason}")
            }
            other => panic!("expected a fault, got {other:?}"),
        }
        // an old view: refused
        let old = Link::open(&dialer, &addr, 6, 0, b"tok-01");
        assert!(old.send(&c, &live).unwrap_err().contains("over"));
    }
}

#[cfg(test)]
mod latency {
    use super::*;

    #[test]
    #[ignore]
    fn ping_pong_latency() {
        let mk = |me: usize| {
            let inbox = Arc::new(Inbox::default());
            inbox.reset(1, 0);
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap().to_string();
            let s = PeerServer::start(l, None, inbox.clone(), 1 << 20, Default::default()).unwrap();
            let mut tokens = vec![b"t".to_vec(), b"t".to_vec()];
            tokens[me] = vec![];
            s.announce(Some(Arc::new(PeerView {
                id: 1,
                me,
                tokens,
                len: 1000,
                chunks: 1,
                scatter_gather: false,
            })));
            (inbox, addr, s)
        };
        let (ia, aa, _sa) = mk(0);
        let (ib, ab, _sb) = mk(1);
        let d = Dialer { crypto: None };
        let a_to_b = Link::open(&d, &ab, 1, 0, b"t");
        let b_to_a = Link::open(&d, &aa, 1, 1, b"t");
        let live = || true;
        let now = || 1u64;
        let n = 2000u64;
        let t = std::thread::spawn(move || {
            for step in 0..n {
                ib.advance(1, step);
                let v = ib.take(1, (step, Phase::Contribution, 0, 0), &now).unwrap();
                let f = proto::step::chunk_frame(proto::step::peer_chunk(
                    step,
                    Phase::Contribution,
                    0,
                    &v,
                ));
                b_to_a.send(&f, &live).unwrap();
            }
        });
        let mut times = Vec::new();
        for step in 0..n {
            ia.advance(1, step);
            let t0 = Instant::now();
            let f = proto::step::chunk_frame(proto::step::peer_chunk(
                step,
                Phase::Contribution,
                0,
                &[1.0; 1000],
            ));
            a_to_b.send(&f, &live).unwrap();
            ia.take(1, (step, Phase::Contribution, 0, 1), &now).unwrap();
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        t.join().unwrap();
        times.sort_by(f64::total_cmp);
        eprintln!(
            "round trip us: p50 {:.1} p90 {:.1} p99 {:.1}",
            times[times.len() / 2],
            times[times.len() * 9 / 10],
            times[times.len() * 99 / 100]
        );
    }
}
