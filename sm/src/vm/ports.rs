//! Port forwarding: a listener on host 127.0.0.1 whose connections are each carried to a
//! guest port through the agent, in both directions with half-close.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sm_agent::client::Agent;

use super::spec::PortMap;

/// A running forward; stops accepting when dropped (open connections finish on their own).
pub struct PortForwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PortForwarder {
    /// Listens on 127.0.0.1:`map.host` (any free port if 0) and forwards each connection
    /// to `map.guest`.
    pub fn start(agent: Agent, map: PortMap) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", map.host))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sm-forward".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let agent = agent.clone();
                            std::thread::spawn(move || {
                                if tcp.set_nonblocking(false).is_err() {
                                    return;
                                }
                                // A refused guest port closes the host connection.
                                if let Ok(tunnel) = agent.connect_tcp(map.guest) {
                                    let _ = tunnel.splice(tcp);
                                }
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })?;
        Ok(PortForwarder {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl PortForwarder {
    /// The host address it listens on (the port the system chose when asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
