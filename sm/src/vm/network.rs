//! The guest's network: none, or user-mode networking through sm-vhost-user-net (the egress
//! policy point) and passt, with the guest's address, route and resolver fixed at boot.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sm_launch::CommandLine;
use sm_vhost_user_net::cli::NetArgs;
use sm_vhost_user_net::policy::EgressRule;
use sm_vhost_user_net::{
    DEFAULT_DNS_FORWARD, DEFAULT_GATEWAY, DEFAULT_GUEST_ADDRESS, DEFAULT_PREFIX_LEN,
};

use super::process::{tool, INHERITED_FD};
use super::service::{Readiness, ServiceSpec};

/// What network a VM gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// No network device: the guest has loopback only.
    None,
    /// A virtio-net device behind sm-vhost-user-net and passt.
    User(UserNetwork),
}

impl Default for Network {
    /// User-mode networking: outbound allowed, the host's loopback denied.
    fn default() -> Network {
        Network::User(UserNetwork::default())
    }
}

/// The user-mode network's egress rules and host resolver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserNetwork {
    /// Rules after the defaults (`allow=any`, `deny=host`); the last matching rule wins.
    pub egress: Vec<EgressRule>,
    /// The host-side resolver the guest's DNS queries go to (default: the host's own).
    pub dns: Option<IpAddr>,
}

/// `--net`'s choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkMode {
    /// No network device.
    None,
    /// User-mode networking (passt) behind the egress policy.
    User,
}

impl Network {
    /// The network `--net MODE --egress ... --dns ...` asks for; rules or a resolver without
    /// a network are refused.
    pub fn from_flags(
        mode: NetworkMode,
        egress: Vec<EgressRule>,
        dns: Option<IpAddr>,
    ) -> Result<Network, String> {
        match mode {
            NetworkMode::User => Ok(Network::User(UserNetwork { egress, dns })),
            NetworkMode::None if egress.is_empty() && dns.is_none() => Ok(Network::None),
            NetworkMode::None => Err("--egress and --dns need a network (--net user)".into()),
        }
    }
}

/// The kernel parameter that tells sm-init how to configure `eth0`.
pub fn kernel_arg() -> String {
    format!(
        "sm.net={DEFAULT_GUEST_ADDRESS}/{DEFAULT_PREFIX_LEN},{DEFAULT_GATEWAY},{DEFAULT_DNS_FORWARD}"
    )
}

/// The network device of a VM: its backend's socket and policy.
#[derive(Clone, Debug)]
pub struct NetDevice {
    /// sm-vhost-user-net's vhost-user socket.
    pub socket: PathBuf,
    /// What it enforces.
    pub policy: UserNetwork,
}

impl NetDevice {
    /// What the supervisor runs for the network: sm-vhost-user-net on the socket
    /// (inherited as descriptor 3), which starts passt.
    pub fn service(&self) -> ServiceSpec {
        let args = NetArgs {
            socket: None,
            fd: Some(INHERITED_FD),
            egress: self.policy.egress.clone(),
            dns: self.policy.dns,
            ..NetArgs::new(&self.socket)
        };
        ServiceSpec {
            name: "net backend".into(),
            program: tool("sm-vhost-user-net"),
            args: args.to_args(),
            socket: self.socket.clone(),
            readiness: Readiness::Notify,
            image: None,
            stale: vec![],
            keeps_state: false,
        }
    }
}

/// How the run record keeps the network (rules as their `--egress` text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// User-mode networking (`false`: none).
    pub user: bool,
    /// The `--egress` rules.
    #[serde(default)]
    pub egress: Vec<String>,
    /// The host resolver.
    #[serde(default)]
    pub dns: Option<IpAddr>,
}

impl Default for NetworkRecord {
    /// What a record from before networking describes: no network device.
    fn default() -> NetworkRecord {
        NetworkRecord {
            user: false,
            egress: vec![],
            dns: None,
        }
    }
}

impl NetworkRecord {
    /// The record of `network`.
    pub fn new(network: &Network) -> NetworkRecord {
        match network {
            Network::None => NetworkRecord::default(),
            Network::User(u) => NetworkRecord {
                user: true,
                egress: u.egress.iter().map(|r| r.to_string()).collect(),
                dns: u.dns,
            },
        }
    }

    /// The record of a clone whose egress rules (when given) and resolver (when given)
    /// replace the snapshot's; a snapshot without a network has no device to give them.
    pub fn with_policy(
        &self,
        egress: Option<&[EgressRule]>,
        dns: Option<IpAddr>,
    ) -> Result<NetworkRecord, String> {
        if egress.is_none() && dns.is_none() {
            return Ok(self.clone());
        }
        if !self.user {
            return Err("the snapshot has no network, so --egress and --dns have nothing to apply to (bake it with --net user)".into());
        }
        Ok(NetworkRecord {
            user: true,
            egress: match egress {
                Some(rules) => rules.iter().map(|r| r.to_string()).collect(),
                None => self.egress.clone(),
            },
            dns: dns.or(self.dns),
        })
    }

    /// The network the record describes.
    pub fn network(&self) -> Result<Network, String> {
        if !self.user {
            return Ok(Network::None);
        }
        let egress = self
            .egress
            .iter()
            .map(|r| r.parse().map_err(|e| format!("egress rule {r:?}: {e}")))
            .collect::<Result<_, String>>()?;
        Ok(Network::User(UserNetwork {
            egress,
            dns: self.dns,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserNetwork {
        UserNetwork {
            egress: vec![
                "deny=0.0.0.0/0".parse().unwrap(),
                "allow=host:8080".parse().unwrap(),
            ],
            dns: Some("127.0.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn the_record_gives_back_the_rules_and_resolver() {
        let net = Network::User(user());
        assert_eq!(NetworkRecord::new(&net).network().unwrap(), net);
        assert_eq!(
            NetworkRecord::new(&Network::None).network().unwrap(),
            Network::None
        );
        let old: NetworkRecord = serde_json::from_str("{\"user\": true}").unwrap();
        assert_eq!(old.network().unwrap(), Network::default());
        assert_eq!(kernel_arg(), "sm.net=10.0.2.15/24,10.0.2.2,10.0.2.3");
    }

    #[test]
    fn a_clone_replaces_the_rules_and_keeps_what_it_does_not_give() {
        let baked = NetworkRecord::new(&Network::User(user()));
        let deny: EgressRule = "deny=any".parse().unwrap();
        let clone = baked.with_policy(Some(&[deny]), None).unwrap();
        assert_eq!(clone.egress, vec![deny.to_string()]);
        assert_eq!(clone.dns, baked.dns);
        assert_eq!(baked.with_policy(None, None).unwrap(), baked);
        let err = NetworkRecord::default()
            .with_policy(Some(&[deny]), None)
            .unwrap_err();
        assert!(err.contains("has no network"), "{err}");
    }

    #[test]
    fn rules_without_a_network_are_refused() {
        let u = user();
        assert!(Network::from_flags(NetworkMode::None, u.egress.clone(), None).is_err());
        assert!(Network::from_flags(NetworkMode::None, vec![], u.dns).is_err());
        assert_eq!(
            Network::from_flags(NetworkMode::None, vec![], None),
            Ok(Network::None)
        );
        assert_eq!(
            Network::from_flags(NetworkMode::User, u.egress.clone(), u.dns),
            Ok(Network::User(u))
        );
    }

    #[test]
    fn the_backend_gets_the_inherited_socket_rules_and_resolver() {
        let s = NetDevice {
            socket: "/r/net.sock".into(),
            policy: user(),
        }
        .service();
        let args: Vec<_> = s
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--fd=3"), "{joined}");
        assert!(joined.contains("--egress=allow=host:8080"), "{joined}");
        assert!(joined.contains("--dns=127.0.0.1"), "{joined}");
        assert!(!joined.contains("--socket"), "{joined}");
    }
}
