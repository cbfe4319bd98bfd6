//! A raw HTTP/2 client for attack tests: frames written byte for byte over real TLS (ALPN `h2`),
//! with a minimal HPACK encoder (literals without Huffman, plus indexed fields for table abuse),
//! so a test can send what no well-behaved client library would: resets in bursts, endless
//! CONTINUATION, floods of SETTINGS and PING. What the server sends back is parsed into frames.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

use super::Certs;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const CANCEL: u32 = 8;
    pub const ENHANCE_YOUR_CALM: u32 = 11;
}

/// One frame, as sent or received.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The wire bytes: 9-byte header, then the payload.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.payload.len() as u32;
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// For a GOAWAY: (last stream id, error code, debug data).
    pub fn goaway(&self) -> Option<(u32, u32, String)> {
        if self.kind != kind::GOAWAY || self.payload.len() < 8 {
            return None;
        }
        let p = &self.payload;
        let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
        let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        Some((last, code, String::from_utf8_lossy(&p[8..]).into_owned()))
    }

    /// For a RST_STREAM: its error code.
    pub fn reset_code(&self) -> Option<u32> {
        (self.kind == kind::RST_STREAM && self.payload.len() == 4)
            .then(|| u32::from_be_bytes([self.payload[0], self.payload[1], self.payload[2], self.payload[3]]))
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: Vec<u8>) -> Vec<u8> {
    Frame {
        kind,
        flags,
        stream,
        payload,
    }
    .encode()
}

/// SETTINGS with the given (id, value) pairs.
pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in values {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(kind::SETTINGS, 0, 0, p)
}

/// A SETTINGS acknowledgement.
pub fn settings_ack() -> Vec<u8> {
    frame(kind::SETTINGS, flag::ACK, 0, Vec::new())
}

/// A PING.
pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(kind::PING, 0, 0, data.to_vec())
}

/// RST_STREAM with `code`.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, code.to_be_bytes().to_vec())
}

/// WINDOW_UPDATE.
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(kind::WINDOW_UPDATE, 0, stream, increment.to_be_bytes().to_vec())
}

/// DATA.
pub fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    frame(kind::DATA, flags, stream, bytes.to_vec())
}

/// HEADERS carrying `block` (an HPACK fragment).
pub fn headers(stream: u32, block: &[u8], end_stream: bool, end_headers: bool) -> Vec<u8> {
    let mut flags = 0;
    if end_stream {
        flags |= flag::END_STREAM;
    }
    if end_headers {
        flags |= flag::END_HEADERS;
    }
    frame(kind::HEADERS, flags, stream, block.to_vec())
}

/// CONTINUATION carrying `block`.
pub fn continuation(stream: u32, block: &[u8], end_headers: bool) -> Vec<u8> {
    let flags = if end_headers { flag::END_HEADERS } else { 0 };
    frame(kind::CONTINUATION, flags, stream, block.to_vec())
}

/// Minimal HPACK encoding (RFC 7541): integers, raw (non-Huffman) strings, literals and indexed
/// references.
pub mod hpack {
    /// Encode `value` with an `n`-bit prefix; `first` holds the bits above the prefix.
    pub fn int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128) as u8 | 0x80);
            value /= 128;
        }
        out.push(value as u8);
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }

    /// A literal field without indexing, new name.
    pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
        out.push(0x00);
        string(out, name.as_bytes());
        string(out, value);
    }

    /// A literal field with incremental indexing (it enters the dynamic table), new name.
    pub fn literal_indexed(out: &mut Vec<u8>, name: &str, value: &[u8]) {
        out.push(0x40);
        string(out, name.as_bytes());
        string(out, value);
    }

    /// An indexed field: a reference to the static (1..=61) or dynamic (62..) table.
    pub fn indexed(out: &mut Vec<u8>, index: usize) {
        int(out, 0x80, 7, index);
    }

    /// The pseudo-headers of a request.
    pub fn request(method: &str, authority: &str, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        literal(&mut out, ":method", method.as_bytes());
        literal(&mut out, ":scheme", b"https");
        literal(&mut out, ":authority", authority.as_bytes());
        literal(&mut out, ":path", path.as_bytes());
        out
    }
}

/// A TCP connection to `addr` from the loopback address `from` (so tests can play several
/// client addresses on one machine).
pub async fn tcp_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// TLS with ALPN `h2` to the relay at `addr`, from `from`.
pub async fn tls_h2(certs: &Certs, from: IpAddr, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(from, addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(certs.client_tls(&[b"h2"])));
    let stream = tls.connect("localhost".try_into().expect("name"), tcp).await?;
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "server did not pick h2"
    );
    Ok(stream)
}

/// What the reader saw.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// The server closed the connection (or it failed).
    Closed,
}

/// A raw HTTP/2 connection: preface and SETTINGS sent, the server's SETTINGS acknowledged, and a
/// task parsing everything the server sends into [`Event`]s.
pub struct RawH2 {
    write: WriteHalf<TlsStream<TcpStream>>,
    events: mpsc::UnboundedReceiver<Event>,
    reader: tokio::task::JoinHandle<()>,
    next_stream: u32,
    /// The authority to put in requests.
    pub authority: String,
}

impl RawH2 {
    /// Connect from `from` to `addr` and complete the HTTP/2 handshake.
    pub async fn connect(certs: &Certs, from: IpAddr, addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tls_h2(certs, from, addr).await?;
        let (read, mut write) = tokio::io::split(stream);
        write.write_all(PREFACE).await?;
        write.write_all(&settings(&[])).await?;
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_frames(read, tx));
        let mut conn = RawH2 {
            write,
            events,
            reader,
            next_stream: 1,
            authority: format!("localhost:{}", addr.port()),
        };
        conn.send(&settings_ack()).await?;
        Ok(conn)
    }

    /// Write bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await?;
        self.write.flush().await
    }

    /// A fresh client stream id.
    pub fn next_stream(&mut self) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        id
    }

    /// HEADERS (END_STREAM, END_HEADERS) for `GET path`, on a new stream; returns its id and
    /// the frame bytes (not sent yet, so callers can batch them).
    pub fn get(&mut self, path: &str) -> (u32, Vec<u8>) {
        let id = self.next_stream();
        let block = hpack::request("GET", &self.authority, path);
        (id, headers(id, &block, true, true))
    }

    /// The next event within `limit`, or `None` on timeout.
    pub async fn next_event(&mut self, limit: Duration) -> Option<Event> {
        tokio::time::timeout(limit, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Wait (at most `limit`) for a GOAWAY or the end of the connection, skipping other frames.
    /// Returns the GOAWAY's (last stream id, code, debug data) if one came, and whether the
    /// connection ended.
    pub async fn until_goaway_or_close(&mut self, limit: Duration) -> (Option<(u32, u32, String)>, bool) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut goaway = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(f)) => {
                    if let Some(g) = f.goaway() {
                        goaway = Some(g);
                    }
                }
                Some(Event::Closed) => return (goaway, true),
                None => return (goaway, false),
            }
        }
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        // The reader holds the other half of the socket: stop it so the connection really closes.
        self.reader.abort();
    }
}

async fn read_frames(mut read: ReadHalf<TlsStream<TcpStream>>, tx: mpsc::UnboundedSender<Event>) {
    loop {
        let mut head = [0u8; 9];
        if read.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            break;
        }
        let f = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        if tx.send(Event::Frame(f)).is_err() {
            return;
        }
    }
    let _ = tx.send(Event::Closed);
}

/// A real HTTP/2 client (the `h2` crate) over TLS from `from`, for requests whose answer the test
/// reads; the connection is driven by its own task.
pub async fn h2_client(
    certs: &Certs,
    from: IpAddr,
    addr: SocketAddr,
) -> std::io::Result<h2::client::SendRequest<bytes::Bytes>> {
    let tls = tls_h2(certs, from, addr).await?;
    let (send, conn) = h2::client::handshake(tls).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// Send `req` with `body` on `send` and collect the answer: (status, body).
pub async fn h2_exchange(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    req: http::Request<()>,
    body: &[u8],
) -> Result<(http::StatusCode, Vec<u8>), h2::Error> {
    let ready = send.clone().ready().await?;
    *send = ready;
    let (resp, mut stream) = send.send_request(req, body.is_empty())?;
    if !body.is_empty() {
        stream.send_data(bytes::Bytes::copy_from_slice(body), true)?;
    }
    let resp = resp.await?;
    let status = resp.status();
    let mut recv = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok((status, out))
}
