//! Transport settings both ends of the gRPC connection share.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// HTTP/2 flow-control window for streams and connections. Parameters and gradients are a few
/// hundred KiB per step; HTTP/2's default 64 KiB windows would make each transfer wait for
/// several window updates.
pub const HTTP2_WINDOW: u32 = 8 << 20;

/// Largest HTTP/2 frame either end accepts. Reports and work carry a few hundred KiB per step;
/// HTTP/2's default 16 KiB frames would cut them into dozens of frames, each handled on its own.
pub const HTTP2_FRAME: u32 = 1 << 20;

/// HTTP/2 keep-alive ping interval, on both ends.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// Accepted connections with Nagle's algorithm off: a step is a small request and a small reply,
/// which Nagle plus delayed acknowledgements would hold back for tens of milliseconds.
pub fn incoming(l: TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

/// A gRPC server with this module's keep-alive and flow-control windows.
pub fn server() -> Server {
    Server::builder()
        .max_frame_size(Some(HTTP2_FRAME))
        .http2_keepalive_interval(Some(KEEPALIVE))
        .initial_stream_window_size(Some(HTTP2_WINDOW))
        .initial_connection_window_size(Some(HTTP2_WINDOW))
}
