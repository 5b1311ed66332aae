//! `sm-vhost-user-net`: parses flags, reads the host's addresses (for `host` rules), starts
//! passt, binds the vhost-user socket (or takes it over: `--fd N`, `LISTEN_FDS`), enters the
//! sandbox (no network needed: passt is reached over a socket pair), then serves frontends
//! until killed or until passt exits. Errors are one line on stderr and a non-zero exit;
//! stdout stays silent.

use std::process::ExitCode;
use std::sync::Arc;

use sm_vhost_user_common::serve::ListenSource;
use sm_vhost_user_net::backend::Link;
use sm_vhost_user_net::cli::{NetArgs, SandboxMode};
use sm_vhost_user_net::passt::{self, PasstConfig, PasstError};
use sm_vhost_user_net::policy::{self, Policy};
use sm_vhost_user_net::serve::{self, ServeError};
use tracing::{info, warn};

/// Everything that stops the backend.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error("cannot read the host's addresses: {0}")]
    HostAddresses(std::io::Error),
    #[error(transparent)]
    Passt(#[from] PasstError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("sandbox: {0} (--sandbox none runs without isolation, for debugging)")]
    Sandbox(#[from] sm_sandbox::SandboxError),
}

fn run(args: NetArgs, source: ListenSource) -> Result<(), MainError> {
    let host = policy::host_addresses().map_err(MainError::HostAddresses)?;
    let policy = Policy::new(&args.egress, args.gateway, args.dns_forward, &host);
    let config = PasstConfig {
        program: args.passt.clone(),
        address: args.guest_address.addr,
        prefix_len: args.guest_address.prefix_len,
        gateway: args.gateway,
        dns_forward: args.dns_forward,
        dns: args.dns,
        mtu: args.mtu,
    };
    let passt = passt::spawn(&config)?;
    let listener = source.listen()?;
    let rules: Vec<String> = policy::DEFAULT_RULES
        .iter()
        .chain(&args.egress)
        .map(|r| r.to_string())
        .collect();
    info!(
        "serving on {source}; passt pid {}, guest {}, gateway {}, egress: {}",
        passt.child.id(),
        args.guest_address,
        args.gateway,
        rules.join(" ")
    );
    match args.sandbox {
        SandboxMode::Namespace => {
            sm_sandbox::enter(&sm_sandbox::Policy::default().companion(passt.child.id()))?
        }
        SandboxMode::None => warn!(
            "--sandbox none: NOT SANDBOXED. This process keeps the host file system, \
             network and all its privileges; a guest exploiting it owns them too"
        ),
    }
    serve::serve(listener, Arc::new(Link::new(passt.stream, policy)))?;
    Ok(())
}

fn main() -> ExitCode {
    sm_vhost_user_common::startup::main("sm-vhost-user-net", "info", run)
}
