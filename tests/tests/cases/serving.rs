//! `coordinator serve` through the real program: a stream sent in chunks predicts what the whole
//! sequence does, concurrent streams do not disturb each other, streams survive a restart, idle
//! streams are evicted, wrong shapes and tokens are refused, and HTTP and gRPC answer the same.

use std::io::{Read, Write};
use std::time::Duration;

use carry_it::{Proc, TempDir};
use data::npy::{read_npz, write_npy};
use proto::convert::{decode_any, tensor};
use proto::pb::{self, predictor_client::PredictorClient};
use serde_json::{Value, json};

pub(crate) const TOKEN: &str = "serving-test-token-0123456789";

/// Trains a small model in `dir/run`.
fn model(dir: &TempDir) -> String {
    let out = dir.join("run");
    carry_it::train_small(dir, "train", &out, &["--progress", "off"]);
    out.to_str().unwrap().to_string()
}

/// Starts `serve`; returns it with its gRPC and HTTP addresses.
pub(crate) fn serve(
    dir: &TempDir,
    name: &str,
    model: &str,
    extra: &[&str],
) -> (Proc, String, String) {
    let mut args = vec![
        "serve",
        "--model",
        model,
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let p = Proc::coordinator(name, &args, &[("CARRY_TOKEN", TOKEN)], dir.path());
    let grpc = p.ready();
    let http = p
        .wait_line(Duration::from_secs(30), "HTTP", |l| l.starts_with("HTTP "))
        .trim_start_matches("HTTP ")
        .trim()
        .to_string();
    (p, grpc, http)
}

/// One HTTP/1.1 request; returns the status and the JSON body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let json = text
        .split("\r\n\r\n")
        .nth(1)
        .map(|b| {
            // a chunked body: take the JSON between the chunk sizes
            let start = b.find('{').unwrap_or(0);
            let end = b.rfind('}').map_or(b.len(), |e| e + 1);
            serde_json::from_str(&b[start..end]).unwrap_or(Value::Null)
        })
        .unwrap_or(Value::Null);
    (status, json)
}

pub(crate) type Client = PredictorClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        proto::security::AddToken,
    >,
>;

pub(crate) async fn client(addr: &str) -> Client {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let t = proto::security::load_token(Some(TOKEN), None).unwrap();
    PredictorClient::with_interceptor(ch, proto::security::AddToken::new(t.as_ref()))
}

async fn predict(c: &mut Client, id: &str, x: &[f32]) -> Vec<f32> {
    let r = c
        .predict(pb::PredictRequest {
            stream_id: id.into(),
            x: Some(tensor(&[x.len() / 2, 2], x)),
            cond: None,
        })
        .await
        .unwrap()
        .into_inner();
    decode_any(r.y.as_ref(), "y").unwrap().0
}

fn series(n: usize, phase: f32) -> Vec<f32> {
    (0..n * 2)
        .map(|i| ((i as f32) * 0.13 + phase).sin() * 0.5)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn streams_sent_in_chunks_concurrently_and_across_a_restart_predict_like_the_whole_sequence() {
    let dir = TempDir::new("serving");
    let model = model(&dir);
    // the reference: `predict` on each whole sequence
    let steps = 1 + 7 + 96;
    let streams = 64;
    let xs: Vec<Vec<f32>> = (0..streams).map(|s| series(steps, s as f32)).collect();
    let all: Vec<f32> = xs.concat();
    write_npy(&dir.join("x.npy"), &[streams, steps, 2], &all).unwrap();
    let mut p = Proc::coordinator(
        "predict",
        &[
            "predict",
            "--model",
            &model,
            "--inputs",
            dir.join("x.npy").to_str().unwrap(),
            "--out",
            dir.join("y.npz").to_str().unwrap(),
        ],
        &[],
        dir.path(),
    );
    p.success(Duration::from_secs(60));
    let want = read_npz(&dir.join("y.npz")).unwrap()["y"].data.clone();
    let want_of = |s: usize| &want[s * steps * 2..(s + 1) * steps * 2];

    let state_dir = dir.join("state");
    let sd = state_dir.to_str().unwrap();
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (mut server, grpc, http_addr) = serve(
        &dir,
        "serve-1",
        &model,
        &["--state-dir", sd, "--metrics-listen", &metrics_addr],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // stream 0 alone, in chunks of 1, 7 and 96 steps
    let got = rt.block_on(async {
        let mut c = client(&grpc).await;
        let x = &xs[0];
        let mut y = predict(&mut c, "alone", &x[..2]).await;
        y.extend(predict(&mut c, "alone", &x[2..16]).await);
        y.extend(predict(&mut c, "alone", &x[16..]).await);
        y
    });
    let d = max_diff(&got, want_of(0));
    assert!(
        d <= 1e-6,
        "chunks of 1, 7 and 96 steps differ from the whole by {d}"
    );
    // 64 streams at once, interleaved one step per request, for the first 8 steps
    let first: Vec<Vec<f32>> = rt.block_on(async {
        let tasks: Vec<_> = (0..streams)
            .map(|s| {
                let (grpc, x) = (grpc.clone(), xs[s].clone());
                tokio::spawn(async move {
                    let mut c = client(&grpc).await;
                    let mut y = Vec::new();
                    for k in 0..8 {
                        y.extend(predict(&mut c, &format!("s{s}"), &x[k * 2..k * 2 + 2]).await);
                    }
                    y
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for (s, y) in first.iter().enumerate() {
        let d = max_diff(y, &want_of(s)[..16]);
        assert!(d <= 1e-6, "stream {s} among 64 differs from alone by {d}");
    }
    // requests of different streams that arrived together ran as one engine call
    let (status, text) = {
        let mut st = std::net::TcpStream::connect(&metrics_addr).unwrap();
        st.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut t = String::new();
        st.read_to_string(&mut t).unwrap();
        (t[9..12].to_string(), t)
    };
    assert_eq!(status, "200");
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let (calls, slots) = (
        value("carry_serve_batch_size_count"),
        value("carry_serve_batch_size_sum"),
    );
    // how many engine calls ran one prediction alone (the histogram's first bucket); how many
    // requests arrive together depends on the machine's load, but among 64 streams sending at
    // once some must have shared a call
    let alone = text
        .lines()
        .filter_map(|l| l.strip_prefix("carry_serve_batch_size_bucket{le=\""))
        .find_map(|l| {
            let (le, n) = l.split_once("\"}")?;
            (le.parse::<f64>().ok()? == 1.0).then(|| n.trim().parse::<f64>().ok())?
        })
        .unwrap_or_else(|| panic!("the batch size histogram's first bucket in {text}"));
    assert!(
        calls > alone,
        "dynamic batching: {slots} predictions in {calls} engine calls, {alone} of them alone"
    );
    // HTTP answers the same numbers as gRPC, from the same stream table
    let (status, body) = http(
        &http_addr,
        "POST",
        "/v1/streams/s3/predict",
        Some(json!({ "x": [[xs[3][16], xs[3][17]]] })),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    let y: Vec<f32> = body["y"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let d = max_diff(&y, &want_of(3)[16..18]);
    assert!(d <= 1e-6, "HTTP differs by {d}");
    // SIGTERM writes every stream; a restarted server continues each exactly
    server.signal(libc::SIGTERM);
    server.success(Duration::from_secs(30));
    server.check(
        server.log().contains("streams saved"),
        "streams saved at SIGTERM",
    );
    let (_server2, grpc2, _) = serve(&dir, "serve-2", &model, &["--state-dir", sd]);
    let rest = rt.block_on(async {
        let mut c = client(&grpc2).await;
        let mut out = Vec::new();
        for s in [0usize, 7, 63] {
            let x = &xs[s];
            out.push((s, predict(&mut c, &format!("s{s}"), &x[16..]).await));
        }
        out
    });
    for (s, y) in rest {
        let d = max_diff(&y, &want_of(s)[16..]);
        assert!(d <= 1e-6, "stream {s} after the restart differs by {d}");
    }
}

#[test]
fn state_forecast_eviction_shapes_and_tokens() {
    let dir = TempDir::new("serving-rules");
    let model = model(&dir);
    let (server, grpc, http_addr) = serve(&dir, "serve", &model, &["--state-ttl", "1s"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (reload_signal, reload) = std::sync::mpsc::channel::<()>();
    let pid = server.pid();
    std::thread::spawn(move || {
        while reload.recv().is_ok() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGHUP);
            }
        }
    });
    rt.block_on(async {
        let mut c = client(&grpc).await;
        let x = series(5, 0.3);
        let y = predict(&mut c, "f", &x).await;
        // a forecast equals stepping the model by hand, and leaves the stream as it was
        let before = c
            .get_state(pb::StreamRequest {
                stream_id: "f".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let r = c
            .forecast(pb::ForecastRequest {
                stream_id: "f".into(),
                horizon: 4,
                future: None,
            })
            .await
            .unwrap()
            .into_inner();
        let f = decode_any(r.y.as_ref(), "y").unwrap().0;
        assert_eq!(
            &f[..2],
            &y[8..10],
            "the first forecast is the last prediction"
        );
        // by hand: another stream with f's state, fed its own predictions
        c.set_state(pb::SetStateRequest {
            stream_id: "hand".into(),
            h: before.h.clone(),
            c: before.c.clone(),
        })
        .await
        .unwrap();
        let mut x = y[8..10].to_vec();
        let mut stepped = x.clone();
        for _ in 1..4 {
            x = predict(&mut c, "hand", &x).await;
            stepped.extend_from_slice(&x);
        }
        assert!(max_diff(&f, &stepped) <= 1e-6, "{f:?} vs {stepped:?}");
        let after = c
            .get_state(pb::StreamRequest {
                stream_id: "f".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(before.h, after.h, "a forecast leaves the state as it was");
        // SetState shapes: the seed's bug made loud
        let e = c
            .set_state(pb::SetStateRequest {
                stream_id: "f".into(),
                h: Some(tensor(&[2, 2], &[0.0; 4])),
                c: Some(tensor(&[2, 8], &[0.0; 16])),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "layer 0 h: expected (8,), got (2,)");
        let e = c
            .predict(pb::PredictRequest {
                stream_id: "f".into(),
                x: Some(tensor(&[2, 3], &[0.0; 6])),
                cond: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains("(t, 2)") && e.message().contains("(2, 3)"),
            "{}",
            e.message()
        );
        // SIGHUP reloads the weights and keeps the streams
        let kept = c
            .get_state(pb::StreamRequest {
                stream_id: "f".into(),
            })
            .await
            .unwrap()
            .into_inner();
        reload_signal.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let still = c
            .get_state(pb::StreamRequest {
                stream_id: "f".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(kept.h, still.h, "a reload keeps the streams");
        // idle streams are evicted after --state-ttl
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let e = c
            .get_state(pb::StreamRequest {
                stream_id: "f".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        // a wrong token is refused
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut anon = PredictorClient::new(ch);
        let e = anon
            .reset(pb::StreamRequest {
                stream_id: "f".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    });
    let (status, body) = http(
        &http_addr,
        "GET",
        "/v1/streams/f/state",
        None,
        Some("wrong-token-0123456789"),
    );
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    let (status, body) = http(
        &http_addr,
        "PUT",
        "/v1/streams/g/state",
        Some(json!({ "h": [[0.0, 0.0], [0.0, 0.0]], "c": vec![vec![0.0f32; 8]; 2] })),
        Some(TOKEN),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("layer 0 h: expected (8,), got (2,)"))
    );
    let (status, _) = http(
        &http_addr,
        "GET",
        "/v1/streams/nope/state",
        None,
        Some(TOKEN),
    );
    assert_eq!(status, 404);
    server.check(
        server.log().contains("weights reloaded; streams kept"),
        "SIGHUP reloaded the weights",
    );
}
