//! HTTP/2 settings of the tunnel connection, shared so both ends agree on them.

use std::time::Duration;

/// How often an idle tunnel is probed with an HTTP/2 PING.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a PING may stay unanswered before the connection is declared dead. Interval plus
/// timeout (20 s) keeps a blackholed tunnel from lingering past the 25 s target.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-stream receive window. 1 MiB keeps a single large body near loopback speed while bounding
/// what one slow stream can make the peer buffer.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Connection-wide receive window: a few streams' worth.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Largest DATA frame either end accepts. Bigger than HTTP/2's 16 KiB default so a large body
/// crosses the tunnel in fewer frames and syscalls; still small enough to bound per-frame buffers.
pub const MAX_FRAME: u32 = 256 * 1024;
/// Largest header block either end accepts on the tunnel (16 KiB, hyper's safe default).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Default number of concurrent streams on one agent connection.
pub const DEFAULT_MAX_STREAMS: u32 = 100;
/// Bytes buffered for sending per stream before back-pressure applies.
pub const MAX_SEND_BUF: usize = 256 * 1024;
