//! `ChaosProxy`: a TCP proxy in front of Postgres or Redis that a test can cut (connections
//! reset, new ones refused), black-hole (connections accepted but nothing forwarded: a hang)
//! and restore.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const OPEN: u8 = 0;
const CUT: u8 = 1;
const HANG: u8 = 2;

/// A cut-able TCP proxy listening on 127.0.0.1:0.
pub struct ChaosProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    // Bumped on every cut/hang so live connections end or stall.
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts proxying to `target` ("host:port").
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(OPEN));
        let (epoch, _) = watch::channel(0_u64);
        let target = target.to_owned();
        let m = mode.clone();
        let ep = epoch.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                match m.load(Ordering::SeqCst) {
                    CUT => drop(client),
                    mode_now => {
                        let target = target.clone();
                        let mut rx = ep.subscribe();
                        tokio::spawn(async move {
                            if mode_now == HANG {
                                // Hold the socket open and silent until the proxy is restored.
                                let _ = rx.changed().await;
                                drop(client);
                                return;
                            }
                            let Ok(server) = TcpStream::connect(&target).await else {
                                return;
                            };
                            let mut client = client;
                            let mut server = server;
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = rx.changed() => {}
                            }
                        });
                    }
                }
            }
        });
        Self {
            addr,
            mode,
            epoch,
            task,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Resets live connections and refuses new ones.
    pub fn cut(&self) {
        self.set(CUT);
    }

    /// Ends live connections; new ones are accepted and then hang in silence.
    pub fn hang(&self) {
        self.set(HANG);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.set(OPEN);
    }

    /// A proxy in front of the Postgres that `url` points at, and `url` rewritten to go
    /// through it.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        let (head, rest) = url.split_once("://").unwrap();
        let (userinfo, hostpath) = match rest.split_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), rest),
        };
        let (host, path) = hostpath.split_once('/').unwrap_or((hostpath, ""));
        let proxy = Self::start(host).await;
        let via = format!("{head}://{userinfo}{}/{path}", proxy.addr);
        (proxy, via)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
