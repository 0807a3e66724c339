//! The workers' peer port, through the real programs: strangers are refused while the job goes
//! on, and a worker on another host sums its gradients with the others across the network.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use carry_it::{
    JOB, Proc, TempDir, assert_equals_reference, reference, serve_job, wait_rows, worker,
};
use proto::pb;
use proto::step::{frame, read_frame};

/// The peer address a worker registered with (its `registered ... peer=ADDR` log line).
fn peer_address(w: &Proc) -> String {
    let line = w.wait_line(Duration::from_secs(60), "registration", |l| {
        l.contains("registered") && l.contains("peer=")
    });
    line.split("peer=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("peer=ADDR")
        .to_string()
}

/// Dials `addr`, says hello for `view` as member `member` with `token`, and returns the refusal
/// the listener answers with ("" when admitted).
fn hello(addr: &str, view: u64, member: u32, token: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("the peer port accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let f = frame(&pb::PeerFrame {
        kind: Some(pb::peer_frame::Kind::Hello(pb::PeerHello {
            protocol: proto::PROTOCOL_VERSION,
            view,
            member,
            pair_token: token.to_vec().into(),
        })),
    });
    s.write_all(&f).unwrap();
    match read_frame(&mut s, 1 << 16) {
        Ok(Some(pb::PeerFrame {
            kind: Some(pb::peer_frame::Kind::Welcome(w)),
        })) => w.refusal,
        other => panic!("expected a PeerWelcome from {addr}, got {other:?}"),
    }
}

/// Whether the listener at `addr` closes a connection that sends `bytes` (within 10 s).
fn closes_after(addr: &str, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).expect("the peer port accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[test]
fn the_peer_port_refuses_strangers_while_the_job_goes_on() {
    let dir = TempDir::new("peer-strangers");
    let want = reference(&dir, "ref", &[]);
    let out = dir.join("job");
    let c = serve_job(
        "coordinator",
        &dir,
        out.to_str().unwrap(),
        &["--workers", "2"],
    );
    let url = format!("http://{}", c.ready());
    // slow steps, so that the job is still running while the strangers knock
    let w1 = worker("w1", &url, &["--throttle-ms", "60"], &dir);
    let _w2 = worker("w2", &url, &["--throttle-ms", "60"], &dir);
    let addr = peer_address(&w1);
    wait_rows(&out, 2, Duration::from_secs(60), &c);

    // bytes that are no frame, and a frame that claims a gigabyte: closed, nothing read into
    // memory
    assert!(closes_after(&addr, b"GET / HTTP/1.1\r\n\r\n"), "garbage");
    let mut huge = vec![0u8];
    huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
    assert!(closes_after(&addr, &huge), "an oversized frame");

    // a view the worker is not in: refused, saying which view it is in
    let r = hello(&addr, 0, 0, b"0123456789abcdef");
    let view = match r.split("this worker is in view ").nth(1) {
        Some(v) => v.trim().parse::<u64>().expect("a view id"),
        None => 0,
    };
    assert!(!r.is_empty(), "a stranger is refused");
    // its current view, as either member, with a guessed pair token: refused
    for member in [0, 1] {
        let r = hello(&addr, view, member, b"0123456789abcdef");
        assert!(
            r.contains("pair token"),
            "member {member}, view {view}: {r}"
        );
        let r = hello(&addr, view, member, b"");
        assert!(r.contains("pair token"), "an empty token: {r}");
    }
    // another protocol version: refused, naming both
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&frame(&pb::PeerFrame {
        kind: Some(pb::peer_frame::Kind::Hello(pb::PeerHello {
            protocol: proto::PROTOCOL_VERSION + 1,
            view,
            member: 0,
            pair_token: Vec::new().into(),
        })),
    }))
    .unwrap();
    match read_frame(&mut s, 1 << 16) {
        Ok(Some(pb::PeerFrame {
            kind: Some(pb::peer_frame::Kind::Welcome(w)),
        })) => assert!(w.refusal.contains("protocol version"), "{}", w.refusal),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // and the job never noticed
    let mut c = c;
    c.success(Duration::from_secs(120));
    assert_equals_reference(&out, &want, 50, &c);
}

/// A network namespace joined to this one by a veth pair: a second host with its own address.
struct Netns {
    name: String,
}

impl Netns {
    /// `None` when this process may not make namespaces (not root, or no `ip`).
    fn new(host: &str, guest: &str) -> Option<Self> {
        let name = format!("carryit{}", std::process::id());
        let (a, b) = (
            format!("ci{}a", std::process::id()),
            format!("ci{}b", std::process::id()),
        );
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        let ns = Self { name };
        let ok = ip(&[
            "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &ns.name,
        ]) && ip(&["addr", "add", &format!("{host}/30"), "dev", &a])
            && ip(&["link", "set", &a, "up"])
            && ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{guest}/30"),
                "dev",
                &b,
            ])
            && ip(&["-n", &ns.name, "link", "set", &b, "up"])
            && ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        assert!(ok, "setting up the veth pair of namespace {}", ns.name);
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // deleting the namespace deletes its end of the veth pair, and with it the other end
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn a_worker_on_another_host_sums_with_its_peer_across_the_network() {
    let octet = 1 + std::process::id() % 250;
    let (host, guest) = (format!("10.231.{octet}.1"), format!("10.231.{octet}.2"));
    let Some(ns) = Netns::new(&host, &guest) else {
        eprintln!("skipped: making a network namespace needs root and iproute2 (`ip`)");
        return;
    };
    let dir = TempDir::new("peer-netns");
    let want = reference(&dir, "ref", &[]);
    let out = dir.join("job");
    let token = "5f0c2a9e8d7b6a5f4e3d2c1b0a998877";
    // off loopback: the coordinator needs the token
    let mut args = vec![
        "train".to_string(),
        "--listen".into(),
        format!("{host}:0"),
        "--workers".into(),
        "2".into(),
        "--out".into(),
        out.to_str().unwrap().into(),
    ];
    args.extend(JOB.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = Proc::coordinator("coordinator", &args, &[("CARRY_TOKEN", token)], dir.path());
    let url = format!("http://{}", c.ready());
    let env = [("CARRY_TOKEN", token)];
    let wargs = |name: &'static str| -> Vec<String> {
        [
            "--coordinator",
            &url,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--name",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let here = wargs("here");
    let here: Vec<&str> = here.iter().map(String::as_str).collect();
    let w1 = Proc::worker("here", &here, &env, dir.path());
    let worker_bin = carry_it::bin("worker");
    let mut there = vec![
        "netns".to_string(),
        "exec".into(),
        ns.name.clone(),
        worker_bin.to_str().unwrap().into(),
    ];
    there.extend(wargs("there"));
    let there: Vec<&str> = there.iter().map(String::as_str).collect();
    let w2 = Proc::start("there", Path::new("ip"), &there, &env, dir.path());
    // each registered the address the other reaches it at
    let (a1, a2) = (peer_address(&w1), peer_address(&w2));
    assert!(a1.starts_with(&format!("{host}:")), "{a1}");
    assert!(a2.starts_with(&format!("{guest}:")), "{a2}");
    c.success(Duration::from_secs(120));
    assert_equals_reference(&out, &want, 50, &c);
    let rows = carry_it::metrics(&out);
    assert!(
        rows.iter().all(|r| r.shards.split(';').count() == 2),
        "both workers computed every step: {:?}",
        rows[0].shards
    );
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let records = carry_it::csv_records(&text);
    let col = records[0]
        .iter()
        .position(|h| h == "peer_bytes")
        .expect("a peer_bytes column");
    assert!(
        records[1..]
            .iter()
            .all(|r| r[col].parse::<f64>().is_ok_and(|b| b > 0.0)),
        "every step's gradients crossed the link between the hosts"
    );
    drop((w1, w2));
}
