//! `--ui-listen`: the live status page of a training job and its data. `GET /` is one
//! self-contained page (no CDN: its script and styles are in it) that redraws itself every
//! second from `GET /api/status`, the JSON of [`crate::report::Status`]. When the job has a token,
//! both need it: `authorization: Bearer <token>`, or `?token=<token>` in the page's address (the
//! page passes it on to its requests).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::report::Status;

/// The page.
const PAGE: &str = include_str!("index.html");

#[derive(Debug, Clone)]
struct Ui {
    status: Status,
    token: Option<Arc<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct Auth {
    token: Option<String>,
}

impl Ui {
    fn allowed(&self, headers: &HeaderMap, q: &Auth) -> bool {
        let Some(t) = &self.token else { return true };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let given = bearer.or(q.token.as_deref()).unwrap_or("");
        bool::from(given.as_bytes().ct_eq(t.as_bytes()))
    }
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({
            "error": "this job has a token: open the page as /?token=<token>, or send `authorization: Bearer <token>`"
        })),
    )
        .into_response()
}

async fn page(State(ui): State<Ui>, Query(q): Query<Auth>, headers: HeaderMap) -> Response {
    if !ui.allowed(&headers, &q) {
        return refused();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn api(State(ui): State<Ui>, Query(q): Query<Auth>, headers: HeaderMap) -> Response {
    if !ui.allowed(&headers, &q) {
        return refused();
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(ui.status.snapshot()),
    )
        .into_response()
}

/// Serves the page and `/api/status` on `listener` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    status: Status,
    token: Option<String>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/", get(page))
        .route("/api/status", get(api))
        .with_state(Ui {
            status,
            token: token.map(Arc::new),
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(cause = %e, "status page server stopped");
    }
}
