//! Network faults without root: a TCP forwarder that can blackhole its connections (stop
//! forwarding, keep the sockets open, like a dropped route), and a minimal HTTP CONNECT proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A forwarder to `target` whose connections can be blackholed.
pub struct Blackhole {
    pub addr: SocketAddr,
    dropping: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Blackhole {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind forwarder");
        let addr = listener.local_addr().expect("addr");
        let dropping = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let (d, c) = (dropping.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    // The route is down: new connections go nowhere.
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let dead = Arc::new(AtomicBool::new(false));
                c.lock().unwrap().push(dead.clone());
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, dead.clone()));
                tokio::spawn(pump(ro, wi, dead));
            }
        });
        Blackhole {
            addr,
            dropping,
            conns,
        }
    }

    /// Silently drop everything on existing connections from now on, and refuse new ones.
    pub fn blackhole(&self) {
        self.dropping.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().iter() {
            c.store(true, Ordering::SeqCst);
        }
    }

    /// Let new connections through again (blackholed ones stay dead).
    pub fn restore(&self) {
        self.dropping.store(false, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dead: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if !dead.load(Ordering::SeqCst) {
                    let _ = to.shutdown().await;
                }
                // A blackholed peer never sees the FIN either: keep the write half open.
                if dead.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                return;
            }
            Ok(n) => n,
        };
        if dead.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A minimal HTTP CONNECT proxy that records the targets it was asked for, and the
/// `Proxy-Authorization` of each CONNECT (empty when none was sent).
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub targets: Arc<Mutex<Vec<String>>>,
    pub authorizations: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let authorizations: Arc<Mutex<Vec<String>>> = Arc::default();
        let (t, a) = (targets.clone(), authorizations.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (t, a) = (t.clone(), a.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        match inbound.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let mut words = text.split_whitespace();
                    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                        let _ = inbound
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    };
                    t.lock().unwrap().push(target.to_string());
                    let auth = text
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("proxy-authorization")
                                .then(|| value.trim().to_string())
                        })
                        .unwrap_or_default();
                    a.lock().unwrap().push(auth);
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        let _ = inbound.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = inbound
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        ConnectProxy {
            addr,
            targets,
            authorizations,
        }
    }
}
