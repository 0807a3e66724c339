//! TLS and mutual TLS handshakes between real processes, the shared token, and the refusal to
//! serve unprotected on a non-loopback address.

use std::time::Duration;

use carry_it::{Proc, TempDir, metrics};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

const SMALL: &[&str] = &[
    "--sequences",
    "40",
    "--val-sequences",
    "0",
    "--batch-size",
    "4",
    "--progress",
    "log",
];

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    /// A second client certificate of the same CA.
    other_cert: String,
    other_key: String,
}

fn pki(dir: &TempDir) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "carry test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (sc, sk) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (cc, ck) = leaf(vec!["worker".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let (oc, ok) = leaf(
        vec!["other-worker".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_string()
    };
    Pki {
        other_cert: write("client2.pem", &oc),
        other_key: write("client2.key", &ok),
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &sc),
        server_key: write("server.key", &sk),
        client_cert: write("client.pem", &cc),
        client_key: write("client.key", &ck),
    }
}

fn train(name: &str, dir: &TempDir, extra: &[&str]) -> (Proc, String) {
    let out = dir.join(name);
    let mut args = vec![
        "train",
        "--listen",
        "127.0.0.1:0",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(SMALL);
    args.extend_from_slice(extra);
    let c = Proc::coordinator(name, &args, &[], dir.path());
    let addr = c.ready();
    (c, addr)
}

#[test]
fn tls_and_mutual_tls_handshakes() {
    let dir = TempDir::new("tls");
    let k = pki(&dir);
    // server-side TLS
    let (mut c, addr) = train(
        "tls",
        &dir,
        &[
            "--steps",
            "10",
            "--tls-cert",
            &k.server_cert,
            "--tls-key",
            &k.server_key,
        ],
    );
    let url = format!("https://{addr}");
    let mut plain = Proc::worker(
        "plaintext",
        &[
            "--coordinator",
            &format!("http://{addr}"),
            "--device",
            "cpu",
            "--give-up-secs",
            "2",
        ],
        &[],
        dir.path(),
    );
    let status = plain.wait(Duration::from_secs(60));
    plain.check(
        !status.success(),
        "a plaintext client cannot talk to a TLS coordinator",
    );
    let mut w = Proc::worker(
        "tls-worker",
        &["--coordinator", &url, "--device", "cpu", "--tls-ca", &k.ca],
        &[],
        dir.path(),
    );
    c.success(Duration::from_secs(60));
    w.success(Duration::from_secs(30));
    assert_eq!(metrics(&dir.join("tls")).len(), 10);

    // mutual TLS: a worker without a client certificate is turned away, one with it trains
    let (mut c, addr) = train(
        "mtls",
        &dir,
        &[
            "--steps",
            "10",
            "--tls-cert",
            &k.server_cert,
            "--tls-key",
            &k.server_key,
            "--tls-client-ca",
            &k.ca,
        ],
    );
    let url = format!("https://{addr}");
    let mut anon = Proc::worker(
        "no-client-cert",
        &[
            "--coordinator",
            &url,
            "--device",
            "cpu",
            "--tls-ca",
            &k.ca,
            "--give-up-secs",
            "2",
        ],
        &[],
        dir.path(),
    );
    let status = anon.wait(Duration::from_secs(60));
    anon.check(
        !status.success(),
        "mutual TLS refuses a worker without a client certificate",
    );
    let mut w = Proc::worker(
        "mtls-worker",
        &[
            "--coordinator",
            &url,
            "--device",
            "cpu",
            "--tls-ca",
            &k.ca,
            "--tls-cert",
            &k.client_cert,
            "--tls-key",
            &k.client_key,
        ],
        &[],
        dir.path(),
    );
    c.success(Duration::from_secs(60));
    w.success(Duration::from_secs(30));
    assert_eq!(metrics(&dir.join("mtls")).len(), 10);
}

#[test]
fn wrong_or_missing_tokens_are_refused_while_the_job_goes_on() {
    let dir = TempDir::new("token");
    let token_file = dir.join("token.txt");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let (mut c, addr) = train(
        "token",
        &dir,
        &[
            "--token-file",
            token_file.to_str().unwrap(),
            "--steps",
            "40",
        ],
    );
    let url = format!("http://{addr}");
    let mut good = Proc::worker(
        "good",
        &[
            "--coordinator",
            &url,
            "--device",
            "cpu",
            "--throttle-ms",
            "20",
        ],
        &[("CARRY_TOKEN", "s3cret-token-0123456789")],
        dir.path(),
    );
    carry_it::wait_rows(&dir.join("token"), 3, Duration::from_secs(60), &c);
    for (name, env) in [
        ("wrong", vec![("CARRY_TOKEN", "guess")]),
        ("missing", vec![]),
    ] {
        let mut bad = Proc::worker(
            name,
            &["--coordinator", &url, "--device", "cpu"],
            &env,
            dir.path(),
        );
        let status = bad.wait(Duration::from_secs(30));
        bad.check(!status.success(), "refused");
        bad.check(
            bad.log().contains("token"),
            "the refusal says it is about the token",
        );
    }
    c.success(Duration::from_secs(60));
    good.success(Duration::from_secs(30));
    assert_eq!(
        metrics(&dir.join("token")).len(),
        40,
        "the job finished all its steps"
    );
}

#[test]
fn an_unprotected_public_address_is_refused() {
    let dir = TempDir::new("insecure");
    let mut c = Proc::coordinator(
        "public",
        &["train", "--listen", "0.0.0.0:0"],
        &[],
        dir.path(),
    );
    let status = c.wait(Duration::from_secs(30));
    c.check(!status.success(), "refused");
    c.check(
        c.log()
            .contains("refusing to serve on non-loopback address"),
        "says why",
    );
    c.check(c.log().contains("--insecure"), "says how to override");
    // server-only TLS encrypts but authenticates nobody: not enough off loopback either
    let k = pki(&dir);
    let mut t = Proc::coordinator(
        "public-tls",
        &[
            "train",
            "--listen",
            "0.0.0.0:0",
            "--tls-cert",
            &k.server_cert,
            "--tls-key",
            &k.server_key,
        ],
        &[],
        dir.path(),
    );
    let status = t.wait(Duration::from_secs(30));
    t.check(
        !status.success() && t.log().contains("authenticates no worker"),
        "server-only TLS without a token is refused off loopback",
    );
    // a placeholder token is refused with advice
    let mut p = Proc::coordinator(
        "placeholder",
        &["train", "--listen", "0.0.0.0:0", "--token", "change-me"],
        &[],
        dir.path(),
    );
    let status = p.wait(Duration::from_secs(30));
    p.check(
        !status.success() && p.log().contains("placeholder") && p.log().contains("openssl rand"),
        "a placeholder token is refused, saying how to make one",
    );
    assert_eq!(
        status.code(),
        Some(2),
        "an invalid configuration exits with 2"
    );
}

fn token() -> proto::security::Token {
    proto::security::load_token(Some("a-long-enough-test-token-0123"), None)
        .unwrap()
        .unwrap()
}

#[test]
fn a_participant_cannot_act_for_another_and_floods_are_bounded() {
    let dir = TempDir::new("identity");
    let want = carry_it::reference(&dir, "ref", &[]);
    let out = dir.join("run");
    let tok = token();
    let mut c = Proc::coordinator(
        "coordinator",
        &{
            let mut a = vec![
                "train",
                "--listen",
                "127.0.0.1:0",
                "--out",
                out.to_str().unwrap(),
                "--workers",
                "2",
                "--max-workers",
                "4",
            ];
            a.extend_from_slice(carry_it::JOB);
            a
        },
        &[("CARRY_TOKEN", tok.expose())],
        dir.path(),
    );
    let url = format!("http://{}", c.ready());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    use proto::pb;
    let (victim, stranger) = rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut cl = pb::coordinator_client::CoordinatorClient::with_interceptor(
            ch,
            proto::security::AddToken::new(Some(&tok)),
        );
        let base = cl.clone();
        let reg = |name: &str| {
            let mut cl = base.clone();
            let name = name.to_string();
            async move {
                cl.register(pb::RegisterRequest {
                    name,
                    device: "raw".into(),
                    protocol: proto::PROTOCOL_VERSION,
                    peer_address: "127.0.0.1:9".into(),
                })
                .await
            }
        };
        let victim = reg("victim").await.unwrap().into_inner().worker_id;
        let stranger = reg("stranger").await.unwrap().into_inner().worker_id;
        let bystander = reg("bystander").await.unwrap().into_inner().worker_id;
        assert_eq!(victim.len(), 32, "128 random bits in hex: {victim}");
        assert_ne!(victim, stranger);
        // the stranger knows its own id only: no guess or variation acts for the victim
        let guesses = [
            // the last hex digit changed (to one it is not)
            format!(
                "{}{}",
                &victim[..31],
                if victim.ends_with('0') { '1' } else { '0' }
            ),
            victim.to_uppercase(),
            format!("{}{}", &victim[..4], &stranger[4..]),
            "w1-00000000".into(),
            String::new(),
        ];
        // (a guess that happens to be a real id, 1 in 65 536 for the spliced one, is left out)
        for g in guesses
            .iter()
            .filter(|g| ![&victim, &stranger, &bystander].contains(g))
        {
            let e = cl
                .heartbeat(pb::HeartbeatRequest {
                    worker_id: g.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::NotFound, "{g}");
            let e = cl
                .leave(pb::LeaveRequest {
                    worker_id: g.clone(),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::NotFound, "{g}");
            assert!(
                !e.message().contains(&victim),
                "no message names another id"
            );
            let Err(e) = cl.follow(proto::step::follow_request(g)).await else {
                panic!("a follow with a guessed id is refused: {g}")
            };
            assert_eq!(e.code(), tonic::Code::NotFound, "{g}");
            let e = cl
                .report(proto::step::report_request(g, 1, &[]))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::NotFound, "{g}");
        }
        // the victim and a bystander follow and get their view; the stranger, who is not in it,
        // cannot hand in a result for it
        let mut streams = Vec::new();
        for id in [&victim, &bystander] {
            streams.push(
                cl.follow(proto::step::follow_request(id))
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        let view = loop {
            let m = streams[0].message().await.unwrap().unwrap();
            if let Ok(proto::step::DirectiveOut::View(v)) = proto::step::directive_in(m) {
                break v;
            }
        };
        let fake = model::replica::StepRecord {
            step: view.start_step,
            record: model::replica::Record::Failure("forged".into()),
        };
        let e = cl
            .report(proto::step::report_request(&stranger, view.id, &[fake]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("not assigned to this worker") && !e.message().contains(&victim),
            "{}",
            e.message()
        );
        drop(streams);
        // a registration flood: beyond --max-workers every registration is refused
        let mut refused = 0;
        for i in 0..20 {
            if let Err(e) = reg(&format!("flood-{i}")).await {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("--max-workers"), "{}", e.message());
                refused += 1;
            }
        }
        assert!(refused >= 18, "{refused} of 20 refused");
        // the raw clients leave; their slots go to real workers
        for id in [&victim, &stranger, &bystander] {
            cl.leave(pb::LeaveRequest {
                worker_id: id.clone(),
            })
            .await
            .unwrap();
        }
        (victim, stranger)
    });
    // real workers join (room was made), one with a name that would break a CSV row
    let env = [("CARRY_TOKEN", tok.expose())];
    let _w1 = Proc::worker(
        "comma",
        &[
            "--coordinator",
            &url,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--name",
            "evil,name\nwith \"quotes\"",
        ],
        &env,
        dir.path(),
    );
    let _w2 = Proc::worker(
        "plain",
        &["--coordinator", &url, "--device", "cpu", "--threads", "1"],
        &env,
        dir.path(),
    );
    c.success(Duration::from_secs(120));
    let d = carry_it::max_diff(&carry_it::params(&out), &want);
    c.check(d <= 1e-4, &format!("max parameter difference {d}"));
    let rows = metrics(&out);
    carry_it::assert_step_log(&rows, 50);
    assert!(
        rows.iter()
            .any(|r| r.shards.contains("evil,namewith \"quotes\"")),
        "the name is kept, without its line break, in a parseable row"
    );
    let log = c.log();
    assert!(
        !log.contains(&victim) && !log.contains(&stranger),
        "ids are never logged"
    );
}

#[test]
fn spawned_workers_train_under_mutual_tls() {
    let dir = TempDir::new("spawn-mtls");
    let k = pki(&dir);
    let (mut c, _) = train(
        "run",
        &dir,
        &[
            "--steps",
            "8",
            "--spawn-workers",
            "2",
            "--tls-cert",
            &k.server_cert,
            "--tls-key",
            &k.server_key,
            "--tls-client-ca",
            &k.ca,
        ],
    );
    c.success(Duration::from_secs(120));
    let rows = metrics(&dir.join("run"));
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().any(|r| r.shards.contains("local-1")));
}

#[test]
fn a_worker_id_is_bound_to_its_client_certificate() {
    let dir = TempDir::new("bound-id");
    let k = pki(&dir);
    let other = (k.other_cert.clone(), k.other_key.clone());
    let (_c, addr) = train(
        "run",
        &dir,
        &[
            "--steps",
            "8",
            "--workers",
            "2",
            "--tls-cert",
            &k.server_cert,
            "--tls-key",
            &k.server_key,
            "--tls-client-ca",
            &k.ca,
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use proto::pb;
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let client = |cert: String, key: String| {
            let (ca, addr) = (k.ca.clone(), addr.clone());
            async move {
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
                    .identity(Identity::from_pem(
                        std::fs::read(cert).unwrap(),
                        std::fs::read(key).unwrap(),
                    ))
                    .domain_name("localhost");
                let ch = Endpoint::from_shared(format!("https://{addr}"))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                pb::coordinator_client::CoordinatorClient::new(ch)
            }
        };
        let mut mine = client(k.client_cert.clone(), k.client_key.clone()).await;
        let mut theirs = client(other.0.clone(), other.1.clone()).await;
        let id = mine
            .register(pb::RegisterRequest {
                name: "owner".into(),
                device: "raw".into(),
                protocol: proto::PROTOCOL_VERSION,
                peer_address: "127.0.0.1:9".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        mine.heartbeat(pb::HeartbeatRequest {
            worker_id: id.clone(),
        })
        .await
        .expect("the owner's certificate acts for its id");
        let e = theirs
            .heartbeat(pb::HeartbeatRequest {
                worker_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        let e = theirs
            .leave(pb::LeaveRequest { worker_id: id })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    });
}
