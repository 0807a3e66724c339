//! The HTTP/JSON front end, for clients without gRPC:
//!
//! - `POST /v1/streams/{id}/predict` `{"x": [[...], ...], "cond": [...]}` -> `{"y": [[...]], "steps": n}`
//! - `POST /v1/streams/{id}/reset` -> `{"ok": true}`
//! - `GET /v1/streams/{id}/state` -> `{"h": [[...]], "c": [[...]], "steps": n}`
//! - `PUT /v1/streams/{id}/state` `{"h": [[...]], "c": [[...]]}` -> `{"ok": true}`
//! - `POST /v1/streams/{id}/forecast` `{"horizon": 12}` -> `{"y": [[...]], "steps": n}`
//! - `GET /healthz` -> `{"ok": true, "streams": n}`
//!
//! Errors are `{"error": "..."}` with 400 (malformed), 401 (token), 404 (unknown stream), 409
//! (cannot run in the stream's state), 429 (queue or table full), 504 (deadline) or 500. A deadline
//! comes from the `x-timeout-ms` header or the `timeout_ms` query parameter. Behind the same token
//! (`authorization: Bearer ...`) and TLS as the gRPC port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::ServeConfig;
use super::engine::{Answer, Handle, Op, ServeError};

#[derive(Debug, Clone)]
struct App {
    handle: Handle,
    /// `Bearer <token>` when a token is required.
    expected: Option<Arc<Vec<u8>>>,
}

/// A JSON error reply.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<ServeError> for Failure {
    fn from(e: ServeError) -> Self {
        let code = match e {
            ServeError::BadInput(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Precondition(_) => StatusCode::CONFLICT,
            ServeError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, e.to_string())
    }
}

impl From<JsonRejection> for Failure {
    fn from(e: JsonRejection) -> Self {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("request body: {}", e.body_text()),
        )
    }
}

type Reply = Result<Json<Value>, Failure>;

#[derive(Debug, Default, Deserialize)]
struct Timeout {
    timeout_ms: Option<u64>,
}

impl App {
    fn check(&self, headers: &HeaderMap) -> Result<(), Failure> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        match headers.get("authorization") {
            Some(v) if bool::from(v.as_bytes().ct_eq(expected)) => Ok(()),
            Some(_) => Err(Failure(
                StatusCode::UNAUTHORIZED,
                "wrong token (expected the server's token in `authorization: Bearer ...`)".into(),
            )),
            None => Err(Failure(
                StatusCode::UNAUTHORIZED,
                "missing token: this server requires `authorization: Bearer <token>`".into(),
            )),
        }
    }

    async fn call(
        &self,
        headers: &HeaderMap,
        q: &Timeout,
        id: String,
        op: Op,
    ) -> Result<Answer, Failure> {
        self.check(headers)?;
        let ms = headers
            .get("x-timeout-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .or(q.timeout_ms);
        let deadline = ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
        Ok(self.handle.call(id, op, deadline).await?)
    }
}

/// Rows of equal width, flattened; `width` is checked when given.
fn matrix(
    what: &str,
    rows: &[Vec<f32>],
    width: Option<usize>,
) -> Result<(Vec<f32>, [usize; 2]), Failure> {
    let bad = |m: String| Failure(StatusCode::BAD_REQUEST, m);
    let w = width.unwrap_or_else(|| rows.first().map_or(0, Vec::len));
    let mut out = Vec::with_capacity(rows.len() * w);
    for (i, r) in rows.iter().enumerate() {
        if r.len() != w {
            return Err(bad(format!(
                "{what}: row {i} has {} values, expected {w}",
                r.len()
            )));
        }
        out.extend_from_slice(r);
    }
    Ok((out, [rows.len(), w]))
}

fn rows(values: &[f32], width: usize) -> Vec<&[f32]> {
    values.chunks(width.max(1)).collect()
}

fn outputs(a: Answer, width: usize) -> Reply {
    match a {
        Answer::Outputs { y, steps, .. } => {
            Ok(Json(json!({ "y": rows(&y, width), "steps": steps })))
        }
        other => Err(Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictBody {
    x: Vec<Vec<f32>>,
    #[serde(default)]
    cond: Option<Vec<f32>>,
}

async fn predict(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<Timeout>,
    headers: HeaderMap,
    body: Result<Json<PredictBody>, JsonRejection>,
) -> Reply {
    app.check(&headers)?;
    let Json(b) = body?;
    let m = app.handle.model();
    let (x, [t, _]) = matrix("x", &b.x, Some(m.input))?;
    if t == 0 {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!(
                "x: expected shape (t, {}) with t >= 1, got no rows",
                m.input
            ),
        ));
    }
    let a = app
        .call(&headers, &q, id, Op::Predict { x, t, cond: b.cond })
        .await?;
    outputs(a, m.output)
}

async fn reset(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<Timeout>,
    headers: HeaderMap,
) -> Reply {
    app.call(&headers, &q, id, Op::Reset).await?;
    Ok(Json(json!({ "ok": true })))
}

async fn get_state(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<Timeout>,
    headers: HeaderMap,
) -> Reply {
    match app.call(&headers, &q, id, Op::GetState).await? {
        Answer::State { h, c, shape, steps } => Ok(Json(json!({
            "h": rows(&h, shape[1]),
            "c": rows(&c, shape[1]),
            "steps": steps,
        }))),
        other => Err(Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    h: Vec<Vec<f32>>,
    c: Vec<Vec<f32>>,
}

async fn put_state(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<Timeout>,
    headers: HeaderMap,
    body: Result<Json<StateBody>, JsonRejection>,
) -> Reply {
    app.check(&headers)?;
    let Json(b) = body?;
    let (h, hs) = matrix("h", &b.h, None)?;
    let (c, cs) = matrix("c", &b.c, None)?;
    app.call(
        &headers,
        &q,
        id,
        Op::SetState {
            h,
            h_shape: hs.to_vec(),
            c,
            c_shape: cs.to_vec(),
        },
    )
    .await?;
    Ok(Json(json!({ "ok": true })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForecastBody {
    horizon: usize,
    /// The inputs known ahead of each forecast step after the first (series models with future
    /// covariates or calendar features).
    #[serde(default)]
    future: Option<Vec<Vec<f32>>>,
}

async fn forecast(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<Timeout>,
    headers: HeaderMap,
    body: Result<Json<ForecastBody>, JsonRejection>,
) -> Reply {
    app.check(&headers)?;
    let Json(b) = body?;
    let m = app.handle.model();
    let a = app
        .call(
            &headers,
            &q,
            id,
            Op::Forecast {
                horizon: b.horizon,
                future: b.future.map(|rows| {
                    let shape = vec![rows.len(), rows.first().map_or(0, Vec::len)];
                    if rows.iter().any(|r| r.len() != shape[1]) {
                        // ragged rows: a shape that matches no model, so the error names it
                        return (Vec::new(), vec![rows.len(), usize::MAX]);
                    }
                    (rows.concat(), shape)
                }),
            },
        )
        .await?;
    outputs(a, m.output)
}

async fn healthz(State(app): State<App>) -> Json<Value> {
    Json(json!({ "ok": true, "streams": app.handle.streams() }))
}

/// The HTTP routes over `handle`.
fn router(handle: Handle, cfg: &ServeConfig) -> Router {
    let app = App {
        handle,
        expected: cfg
            .token
            .as_ref()
            .map(|t| Arc::new(format!("Bearer {}", t.expose()).into_bytes())),
    };
    Router::new()
        .route("/v1/streams/{id}/predict", post(predict))
        .route("/v1/streams/{id}/reset", post(reset))
        .route("/v1/streams/{id}/state", get(get_state).put(put_state))
        .route("/v1/streams/{id}/forecast", post(forecast))
        .route("/healthz", get(healthz))
        .with_state(app)
}

/// Serves the HTTP routes on `listener` until `stop`, over TLS when `cfg` has it.
pub(crate) async fn serve(
    cfg: ServeConfig,
    handle: Handle,
    listener: TcpListener,
    stop: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let app = router(handle, &cfg);
    let Some(acceptor) = tls else {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            warn!(cause = %e, "HTTP server stopped");
        }
        return;
    };
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(cause = %e, "accepting an HTTP connection");
                    continue;
                }
            },
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}

/// A TLS acceptor for the HTTP port from the same files as the gRPC port.
pub(crate) fn acceptor(tls: &crate::config::TlsFiles) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| format!("--tls-cert {}: {e}", tls.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("--tls-key {}: {e}", tls.key.display()))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
