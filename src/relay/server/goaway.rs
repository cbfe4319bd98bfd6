//! Cutting a public HTTP/2 connection with a GOAWAY of our own. hyper can only close gracefully
//! (GOAWAY with NO_ERROR, then wait for the client), which is no answer to an abusive client. So
//! the connection's IO passes only whole frames to the socket: at any moment the relay can stop
//! hyper, drop the partial frame hyper was writing, and send GOAWAY (ENHANCE_YOUR_CALM) naming the
//! last stream the client opened, as h2 itself does when its own limits trip.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// GOAWAY error code for a peer generating excessive load (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Bytes of whole frames kept before writes wait for the socket; h2 keeps its own send buffer
/// per stream, so this only smooths syscalls.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// The client connection preface, which precedes the client's first frame.
const PREFACE_LEN: usize = 24;
/// Frame type of HEADERS.
const HEADERS: u8 = 0x1;
/// Frame type of GOAWAY.
const GOAWAY: u8 = 0x7;

/// Where a byte stream stands in HTTP/2 framing: each frame is a 9-byte header (24-bit length,
/// type, flags, stream id) and `length` bytes of payload.
#[derive(Debug, Default)]
struct FrameCursor {
    head: [u8; 9],
    head_len: usize,
    payload_left: usize,
}

impl FrameCursor {
    /// Advance over `bytes`, calling `on_head` with every complete frame header; returns the
    /// offset just past the last frame that completed inside `bytes`, if any did.
    fn feed(&mut self, bytes: &[u8], mut on_head: impl FnMut(&[u8; 9])) -> Option<usize> {
        let mut i = 0;
        let mut last_end = None;
        while i < bytes.len() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() - i);
                i += n;
                self.payload_left -= n;
                if self.payload_left == 0 {
                    last_end = Some(i);
                }
                continue;
            }
            let n = (9 - self.head_len).min(bytes.len() - i);
            self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[i..i + n]);
            self.head_len += n;
            i += n;
            if self.head_len == 9 {
                on_head(&self.head);
                self.head_len = 0;
                self.payload_left =
                    u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]) as usize;
                if self.payload_left == 0 {
                    last_end = Some(i);
                }
            }
        }
        last_end
    }
}

struct Shared<I> {
    io: I,
    /// Bytes hyper wrote that are not on the socket yet.
    out: BytesMut,
    /// How much of `out` is whole frames (safe to send).
    complete: usize,
    out_frames: FrameCursor,
    in_frames: FrameCursor,
    preface_left: usize,
    last_stream: u32,
}

impl<I: AsyncWrite + Unpin> Shared<I> {
    /// Write the whole frames buffered so far.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.complete > 0 {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[..self.complete]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
            self.complete -= n;
        }
        if self.out.is_empty() && self.out.capacity() > OUT_HIGH_WATER {
            // One large burst must not stay allocated for the rest of an idle connection's life.
            self.out = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

fn lock<I>(shared: &Mutex<Shared<I>>) -> std::sync::MutexGuard<'_, Shared<I>> {
    // Only the connection's own task touches it; a poisoned lock still holds consistent bytes.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The IO hyper serves the connection on.
pub struct FrameIo<I>(Arc<Mutex<Shared<I>>>);

/// The relay's handle on the same connection, used once hyper is stopped.
pub struct Cutter<I>(Arc<Mutex<Shared<I>>>);

/// Wrap a freshly accepted HTTP/2 connection (nothing read from it yet).
pub fn wrap<I>(io: I) -> (FrameIo<I>, Cutter<I>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        out: BytesMut::new(),
        complete: 0,
        out_frames: FrameCursor::default(),
        in_frames: FrameCursor::default(),
        preface_left: PREFACE_LEN,
        last_stream: 0,
    }));
    (FrameIo(shared.clone()), Cutter(shared))
}

impl<I: AsyncRead + Unpin> AsyncRead for FrameIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        let before = buf.filled().len();
        ready!(Pin::new(&mut s.io).poll_read(cx, buf))?;
        let mut new = &buf.filled()[before..];
        // Follow the client's frames only to know the last stream it opened.
        let skip = s.preface_left.min(new.len());
        s.preface_left -= skip;
        new = &new[skip..];
        let mut last = s.last_stream;
        s.in_frames.feed(new, |head| {
            if head[3] == HEADERS {
                let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                last = last.max(id);
            }
        });
        s.last_stream = last;
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FrameIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.0);
        // Wait for the socket only with whole frames to send: a frame hyper is half way through
        // is always taken, so it can be finished.
        if s.out.len() >= OUT_HIGH_WATER && s.complete > 0 {
            ready!(s.poll_drain(cx))?;
        }
        let start = s.out.len();
        s.out.extend_from_slice(buf);
        if let Some(end) = s.out_frames.feed(buf, |_| {}) {
            s.complete = start + end;
        }
        // Send what is whole now; the socket not being ready is not the caller's concern yet.
        if let Poll::Ready(Err(e)) = s.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        ready!(s.poll_drain(cx))?;
        Pin::new(&mut s.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        ready!(s.poll_drain(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

impl<I: AsyncWrite + Unpin> Cutter<I> {
    /// With hyper stopped: drop any partial frame, send GOAWAY(`code`) naming the last stream
    /// the client opened, and close. Gives up after `limit` (a client that does not read).
    pub async fn goaway(self, code: u32, debug: &'static [u8], limit: Duration) {
        {
            let mut s = lock(&self.0);
            let complete = s.complete;
            s.out.truncate(complete);
            let mut payload = Vec::with_capacity(8 + debug.len());
            payload.extend_from_slice(&s.last_stream.to_be_bytes());
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(debug);
            let len = (payload.len() as u32).to_be_bytes();
            s.out
                .extend_from_slice(&[len[1], len[2], len[3], GOAWAY, 0, 0, 0, 0, 0]);
            s.out.extend_from_slice(&payload);
            s.complete = s.out.len();
        }
        let close = poll_fn(|cx| {
            let mut s = lock(&self.0);
            ready!(s.poll_drain(cx))?;
            ready!(Pin::new(&mut s.io).poll_flush(cx))?;
            Pin::new(&mut s.io).poll_shutdown(cx)
        });
        let _ = tokio::time::timeout(limit, close).await;
    }

    /// With hyper stopped: close after whatever whole frames are buffered (hyper already sent
    /// its own GOAWAY).
    pub async fn close(self, limit: Duration) {
        let close = poll_fn(|cx| {
            let mut s = lock(&self.0);
            ready!(s.poll_drain(cx))?;
            Pin::new(&mut s.io).poll_shutdown(cx)
        });
        let _ = tokio::time::timeout(limit, close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn the_cursor_finds_frame_ends_across_any_split() {
        let mut wire = frame(0x4, 0, &[]);
        wire.extend(frame(0x0, 1, &[7; 300]));
        wire.extend(frame(0x1, 3, b"abc"));
        let ends = [9, 9 + 9 + 300, wire.len()];
        for split in 1..wire.len() {
            let mut c = FrameCursor::default();
            let mut heads = 0;
            let first = c.feed(&wire[..split], |_| heads += 1);
            let second = c.feed(&wire[split..], |_| heads += 1).map(|e| e + split);
            assert_eq!(heads, 3, "split at {split}");
            assert_eq!(
                first,
                ends.iter().rev().find(|e| **e <= split).copied(),
                "split at {split}"
            );
            assert_eq!(second, Some(wire.len()), "split at {split}");
        }
    }

    #[tokio::test]
    async fn a_cut_drops_the_partial_frame_and_names_the_last_stream() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let (mut io, cutter) = wrap(server);
        // The client's preface and two requests.
        let mut inbound = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        inbound.extend(frame(0x4, 0, &[]));
        inbound.extend(frame(0x1, 1, b"h"));
        inbound.extend(frame(0x1, 5, b"h"));
        client.write_all(&inbound).await.unwrap();
        let mut sink = vec![0u8; inbound.len()];
        io.read_exact(&mut sink).await.unwrap();
        // The server wrote one whole frame and the first half of another.
        let whole = frame(0x0, 1, b"hello");
        let half = &frame(0x0, 5, &[1; 100])[..50];
        io.write_all(&whole).await.unwrap();
        io.write_all(half).await.unwrap();
        drop(io);
        cutter
            .goaway(ENHANCE_YOUR_CALM, b"too_many_resets", Duration::from_secs(1))
            .await;
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut want = whole.clone();
        let mut payload = 5u32.to_be_bytes().to_vec();
        payload.extend(ENHANCE_YOUR_CALM.to_be_bytes());
        payload.extend(b"too_many_resets");
        want.extend(frame(GOAWAY, 0, &payload));
        assert_eq!(got, want);
    }
}
