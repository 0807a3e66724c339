//! The live status page in a real browser (headless Chromium) during a real 2-worker run: it
//! loads, shows the workers, and the plotted step count grows between two looks; `/api/status`
//! agrees with `metrics.csv`; without the job's token the page is refused.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use carry_it::{JOB, Proc, TempDir, metrics, wait_rows};

const TOKEN: &str = "ui-test-token-0123456789abcdef";

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "no Chromium found: install Debian's `chromium` (scripts/install-test-tools.sh does) or set CHROMIUM"
    );
}

/// Loads `url` in headless Chromium, lets its script run, and returns the rendered DOM; also
/// writes a screenshot to `png`.
fn look(url: &str, png: &Path, profile: &Path) -> String {
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        "--virtual-time-budget=3000",
    ];
    let run = |extra: &str| {
        let out = Command::new(chromium())
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(extra)
            .arg(url)
            .output()
            .expect("running chromium");
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let _ = run(&format!("--screenshot={}", png.display()));
    run("--dump-dom")
}

/// The step count the loss plot shows (`data-steps` of the `#loss` chart).
fn plotted_steps(dom: &str) -> u64 {
    let at = dom.find("id=\"loss\"").expect("the loss chart");
    let tag_start = dom[..at].rfind('<').unwrap();
    let tag = &dom[tag_start..at + dom[at..].find('>').unwrap()];
    let v = tag.split("data-steps=\"").nth(1).expect("data-steps");
    v[..v.find('"').unwrap()].parse().unwrap()
}

fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn the_status_page_shows_the_job_live_in_a_browser() {
    let dir = TempDir::new("ui");
    let out = dir.join("run");
    let mut args = vec![
        "train",
        "--listen",
        "127.0.0.1:0",
        "--ui-listen",
        "127.0.0.1:0",
        "--spawn-workers",
        "2",
        "--worker-args",
        // about 10 s of training: time for two looks even when the browser is slow to start
        "--throttle-ms 200",
        "--linger",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(JOB);
    let mut c = Proc::coordinator("coordinator", &args, &[("CARRY_TOKEN", TOKEN)], dir.path());
    c.ready();
    let url = c
        .wait_line(Duration::from_secs(30), "the UI address", |l| {
            l.starts_with("UI ")
        })
        .trim_start_matches("UI ")
        .trim()
        .to_string();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let page = format!("{url}?token={TOKEN}");
    let profile = dir.join("chromium-profile");
    wait_rows(&out, 4, Duration::from_secs(60), &c);
    let first = look(&page, &dir.join("first.png"), &profile);
    assert!(
        first.contains("carry &middot; training job") || first.contains("carry · training job")
    );
    for w in ["local-0", "local-1"] {
        assert!(
            first.contains(&format!("data-worker=\"{w}\"")),
            "the page shows worker {w}"
        );
    }
    let n1 = plotted_steps(&first);
    assert!(
        n1 < 50,
        "the job (50 steps) ended before the first look at the page"
    );
    wait_rows(&out, (n1 as usize + 5).min(50), Duration::from_secs(60), &c);
    let second = look(&page, &dir.join("second.png"), &profile);
    let n2 = plotted_steps(&second);
    assert!(n2 > n1, "the plotted step count grows: {n1} then {n2}");
    for png in ["first.png", "second.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert!(
            bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG"),
            "a screenshot of the page"
        );
    }
    // the job ends; the page and the API stay up while the coordinator lingers
    c.wait_line(Duration::from_secs(120), "the end of the job", |l| {
        l.contains("lingering until SIGTERM")
    });
    let (status, body) = get(&addr, "/api/status", None);
    assert_eq!(status, 401, "the job's token guards the status: {body}");
    // by the time the coordinator says the job is over, the final checkpoint is on disk
    let ck = model::checkpoint::Checkpoint::load(&out).expect("the final checkpoint");
    assert_eq!(ck.cursor.global, 50, "the checkpoint of the last step");
    // the status page may show the last step a moment later
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let s = loop {
        let (status, body) = get(&addr, "/api/status", Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        let json_start = body.find('{').unwrap();
        let json_end = body.rfind('}').unwrap() + 1;
        let s: serde_json::Value = serde_json::from_str(&body[json_start..json_end]).unwrap();
        let last = s["checkpoints"]
            .as_array()
            .and_then(|c| c.last())
            .and_then(|c| c["step"].as_u64());
        if s["steps"].as_u64() == Some(50) && last.is_some_and(|l| l >= 49) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the status never showed the last step and checkpoint: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rows = metrics(&out);
    assert_eq!(s["steps"].as_u64(), Some(rows.len() as u64));
    let loss = s["loss"].as_array().unwrap();
    assert_eq!(loss.len(), rows.len(), "one loss point per committed step");
    for (p, r) in loss.iter().zip(&rows) {
        assert_eq!(p[0].as_f64().unwrap() as u64, r.step);
        let l = p[1].as_f64().unwrap();
        assert!(
            (l - r.loss).abs() <= 1e-8 * r.loss.abs().max(1.0),
            "step {}: {l} vs {}",
            r.step,
            r.loss
        );
    }
    let val: Vec<u64> = s["val_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_f64().unwrap() as u64)
        .collect();
    let want: Vec<u64> = rows
        .iter()
        .filter(|r| r.val_loss.is_some())
        .map(|r| r.step)
        .collect();
    assert_eq!(val, want, "validation at the same steps");
    assert!(s["workers"]["local-0"]["shards"].as_u64().unwrap() > 0);
    c.signal(libc::SIGTERM);
    c.success(Duration::from_secs(30));
}
