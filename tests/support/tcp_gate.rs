//! A TCP proxy on a free loopback port whose client-to-server direction can
//! be held shut: what a slow or cut network does to one client while the
//! others go on.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards every connection to `target`. Dropping it stops accepting.
pub struct TcpGate {
    host: String,
    state: Arc<Gate>,
    accept: JoinHandle<()>,
}

struct Gate {
    /// Whether client bytes go through.
    open: watch::Sender<bool>,
    /// How many client reads are waiting at the closed gate.
    waiting: watch::Sender<usize>,
}

impl TcpGate {
    /// Starts forwarding to `target` (`host:port`), open.
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Gate {
            open: watch::channel(true).0,
            waiting: watch::channel(0).0,
        });
        let (target, gate) = (target.to_string(), state.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                tokio::spawn(forward(client, server, gate.clone()));
            }
        });
        Self {
            host,
            state,
            accept,
        }
    }

    /// `host:port` of the proxy.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Stops forwarding client bytes (they wait at the gate).
    pub fn hold(&self) {
        self.state.open.send_replace(false);
    }

    /// Lets the waiting and later client bytes through.
    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    /// Waits until a client has sent something that the gate holds.
    pub async fn holding(&self) {
        let mut waiting = self.state.waiting.subscribe();
        waiting.wait_for(|n| *n > 0).await.expect("the gate lives");
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies bytes both ways; client bytes only while the gate is open.
async fn forward(client: TcpStream, server: TcpStream, gate: Arc<Gate>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let downstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buffer = vec![0; 16 * 1024];
    let mut open = gate.open.subscribe();
    loop {
        let n = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !*open.borrow_and_update() {
            gate.waiting.send_modify(|n| *n += 1);
            let reopened = open.wait_for(|open| *open).await.is_ok();
            gate.waiting.send_modify(|n| *n -= 1);
            if !reopened {
                break;
            }
        }
        if server_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    downstream.abort();
}
