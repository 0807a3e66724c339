//! The gRPC front end: `carry.v1.Predictor` and the health service, behind the token and TLS.
//! Each call's deadline (`grpc-timeout`) is honoured.

use std::time::{Duration, Instant};

use proto::convert;
use proto::pb::predictor_server::{Predictor, PredictorServer};
use proto::pb::{self};
use proto::security::CheckToken;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::ServeConfig;
use super::engine::{Answer, Handle, Op, ServeError};

/// The gRPC status of a serving error.
pub(crate) fn status(e: ServeError) -> Status {
    let m = e.to_string();
    match e {
        ServeError::BadInput(_) => Status::invalid_argument(m),
        ServeError::NotFound(_) => Status::not_found(m),
        ServeError::Precondition(_) => Status::failed_precondition(m),
        ServeError::Busy(_) => Status::resource_exhausted(m),
        ServeError::Deadline(_) => Status::deadline_exceeded(m),
        ServeError::Internal(_) => Status::internal(m),
    }
}

/// The deadline a call carries in `grpc-timeout` (`100m` = 100 ms; units H M S m u n).
fn deadline<T>(req: &Request<T>) -> Option<Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

fn bad(e: convert::WireError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn outputs(a: Answer, width: usize) -> Result<Response<pb::PredictReply>, Status> {
    match a {
        Answer::Outputs { y, rows, steps } => Ok(Response::new(pb::PredictReply {
            y: Some(convert::tensor(&[rows, width], &y)),
            steps,
        })),
        other => Err(Status::internal(format!("unexpected answer {other:?}"))),
    }
}

/// The `carry.v1.Predictor` service.
#[derive(Debug, Clone)]
pub(crate) struct PredictorService {
    handle: Handle,
}

#[tonic::async_trait]
impl Predictor for PredictorService {
    async fn predict(
        &self,
        req: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictReply>, Status> {
        let d = deadline(&req);
        let m = self.handle.model();
        let r = req.into_inner();
        let (x, t) = convert::decode_steps(r.x.as_ref(), "x", m.input).map_err(bad)?;
        let cond = match r.cond.as_ref() {
            Some(c) => Some(convert::decode_any(Some(c), "cond").map_err(bad)?.0),
            None => None,
        };
        let a = self
            .handle
            .call(r.stream_id, Op::Predict { x, t, cond }, d)
            .await
            .map_err(status)?;
        outputs(a, m.output)
    }

    async fn reset(
        &self,
        req: Request<pb::StreamRequest>,
    ) -> Result<Response<pb::ResetReply>, Status> {
        let d = deadline(&req);
        self.handle
            .call(req.into_inner().stream_id, Op::Reset, d)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResetReply {}))
    }

    async fn get_state(
        &self,
        req: Request<pb::StreamRequest>,
    ) -> Result<Response<pb::StateReply>, Status> {
        let d = deadline(&req);
        match self
            .handle
            .call(req.into_inner().stream_id, Op::GetState, d)
            .await
            .map_err(status)?
        {
            Answer::State { h, c, shape, steps } => Ok(Response::new(pb::StateReply {
                h: Some(convert::tensor(&shape, &h)),
                c: Some(convert::tensor(&shape, &c)),
                steps,
            })),
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn set_state(
        &self,
        req: Request<pb::SetStateRequest>,
    ) -> Result<Response<pb::ResetReply>, Status> {
        let d = deadline(&req);
        let r = req.into_inner();
        let (h, h_shape) = convert::decode_any(r.h.as_ref(), "h").map_err(bad)?;
        let (c, c_shape) = convert::decode_any(r.c.as_ref(), "c").map_err(bad)?;
        self.handle
            .call(
                r.stream_id,
                Op::SetState {
                    h,
                    h_shape,
                    c,
                    c_shape,
                },
                d,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResetReply {}))
    }

    async fn forecast(
        &self,
        req: Request<pb::ForecastRequest>,
    ) -> Result<Response<pb::PredictReply>, Status> {
        let d = deadline(&req);
        let m = self.handle.model();
        let r = req.into_inner();
        let a = self
            .handle
            .call(
                r.stream_id,
                Op::Forecast {
                    horizon: r.horizon as usize,
                    future: r
                        .future
                        .as_ref()
                        .map(|t| convert::decode_any(Some(t), "future"))
                        .transpose()
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                },
                d,
            )
            .await
            .map_err(status)?;
        outputs(a, m.output)
    }
}

/// Serves the Predictor and health on `listener` until `stop`.
pub(crate) async fn serve(
    cfg: ServeConfig,
    handle: Handle,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<PredictorServer<PredictorService>>()
        .await;
    if let Some(a) = cfg.health_listen {
        match crate::server::health_only(a, health.clone(), stop.clone()).await {
            Ok(_) => {}
            Err(e) => warn!(cause = %e, "the health port could not be served"),
        }
    }
    let svc = PredictorServer::new(PredictorService { handle })
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    let svc = InterceptedService::new(svc, CheckToken::new(cfg.token.as_ref()));
    let mut builder = runtime::net::server();
    match crate::server::tls_config(cfg.tls.as_ref(), None) {
        Ok(Some(t)) => match builder.tls_config(t) {
            Ok(b) => builder = b,
            Err(e) => {
                warn!(cause = %e, "TLS settings refused");
                return;
            }
        },
        Ok(None) => {}
        Err(e) => {
            warn!(cause = %e, "TLS files unreadable");
            return;
        }
    }
    if let Err(e) = builder
        .add_service(health)
        .add_service(svc)
        .serve_with_incoming_shutdown(runtime::net::incoming(listener), stop.cancelled_owned())
        .await
    {
        warn!(cause = %e, "gRPC server stopped");
    }
}
