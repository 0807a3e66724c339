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
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_string()
    };
    Pki {
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
}
