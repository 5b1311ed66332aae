//! Ports forwarded from the host to a VM (`vm.exposeTcp`).

use super::*;

/// A forward of a VM's port, closed by `close()` or when its VM goes.
pub(crate) struct Forward {
    addr: SocketAddr,
    forwarder: Mutex<Option<sm::vm::PortForwarder>>,
}

impl Forward {
    pub(crate) fn start(agent: Agent, host: u16, guest: u16) -> std::io::Result<Arc<Forward>> {
        let forwarder = sm::vm::PortForwarder::start(agent, sm::vm::PortMap { host, guest })?;
        Ok(Arc::new(Forward {
            addr: forwarder.local_addr(),
            forwarder: Mutex::new(Some(forwarder)),
        }))
    }

    pub(crate) fn close(&self) {
        drop(lock(&self.forwarder).take());
    }
}

/// A host port forwarded to a guest port.
#[napi]
pub struct Forwarder {
    pub(crate) inner: Arc<Forward>,
}

#[napi]
impl Forwarder {
    /// `127.0.0.1:PORT`.
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.inner.addr.to_string()
    }

    /// The host address (`127.0.0.1`).
    #[napi(getter)]
    pub fn host(&self) -> String {
        self.inner.addr.ip().to_string()
    }

    /// The host port.
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.inner.addr.port().into()
    }

    /// Stops accepting connections (open ones finish on their own).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let inner = self.inner.clone();
        promise(
            env,
            move || {
                inner.close();
                Ok(())
            },
            |_, ()| Ok(()),
        )
    }
}
