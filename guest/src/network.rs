//! The guest's network interface, configured statically from the kernel command line so that
//! the command starts with its address, route and resolver already in place (no DHCP wait).
//!
//! `sm.net=ADDRESS/PREFIX,GATEWAY,DNS` (IPv4) configures `eth0`, the virtio-net device, and
//! writes `/etc/resolv.conf`; without it the guest has no network beyond loopback.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The interface the (only) virtio-net device gets.
const INTERFACE: &[u8] = b"eth0";
/// Where the resolver's address goes; sm copies it into an image's root.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What `sm.net=` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default route's next hop.
    pub gateway: Ipv4Addr,
    /// The resolver.
    pub dns: Ipv4Addr,
}

impl NetworkConfig {
    /// Finds `sm.net=` in a kernel command line; `Err` if it is there but malformed.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<NetworkConfig>, String> {
        let Some(value) = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("sm.net="))
        else {
            return Ok(None);
        };
        let bad = || format!("sm.net={value}: expected ADDRESS/PREFIX,GATEWAY,DNS");
        let mut parts = value.split(',');
        let (cidr, gateway, dns) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(c), Some(g), Some(d), None) => (c, g, d),
            _ => return Err(bad()),
        };
        let (address, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Some(NetworkConfig {
            address: address.parse().map_err(|_| bad())?,
            prefix,
            gateway: gateway.parse().map_err(|_| bad())?,
            dns: dns.parse().map_err(|_| bad())?,
        }))
    }

    fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }
}

/// Configures `eth0` if the kernel command line says how (see the module docs).
pub fn configure() -> Result<(), String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(config) = NetworkConfig::from_cmdline(&cmdline)? else {
        return Ok(());
    };
    apply(&config).map_err(|e| format!("configuring eth0 ({config:?}): {e}"))?;
    std::fs::write(RESOLV_CONF, format!("nameserver {}\n", config.dns))
        .map_err(|e| format!("writing {RESOLV_CONF}: {e}"))
}

fn apply(config: &NetworkConfig) -> io::Result<()> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    set_address(&sock, libc::SIOCSIFADDR, config.address)?;
    set_address(&sock, libc::SIOCSIFNETMASK, config.netmask())?;
    let mut req = ifreq();
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only `req`, which outlives the calls;
    // the flags union member is the one these requests use.
    unsafe {
        ioctl(&sock, libc::SIOCGIFFLAGS, &mut req)?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        ioctl(&sock, libc::SIOCSIFFLAGS, &mut req)?;
    }
    add_default_route(&sock, config.gateway)
}

/// An `ifreq` naming [`INTERFACE`].
fn ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(INTERFACE) {
        *dst = *src as libc::c_char;
    }
    req
}

fn sockaddr_in(address: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; the kernel reads the
    // family first and the address as sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_address(sock: &OwnedFd, request: libc::c_ulong, address: Ipv4Addr) -> io::Result<()> {
    let mut req = ifreq();
    req.ifr_ifru.ifru_addr = sockaddr_in(address);
    // SAFETY: SIOCSIFADDR/SIOCSIFNETMASK read only `req` (name and the address member set
    // above), which outlives the call.
    unsafe { ioctl(sock, request, &mut req) }
}

fn add_default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    // SAFETY: rtentry is plain data; all-zero is a valid value (no device name pointer).
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_in(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads only `route`, which outlives the call; rt_dev is null.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut route) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// ioctl(2) on `sock` with an `ifreq`.
///
/// # Safety
/// `request` must be one that reads or writes only an `ifreq`.
unsafe fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: the caller guarantees `request` takes an ifreq, and `req` is one.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_names_address_route_and_resolver() {
        let c = NetworkConfig::from_cmdline("quiet sm.net=10.0.2.15/24,10.0.2.2,10.0.2.3 x=1")
            .unwrap()
            .unwrap();
        assert_eq!(c.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.gateway, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(c.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(NetworkConfig::from_cmdline("quiet"), Ok(None));
        for bad in [
            "sm.net=10.0.2.15,10.0.2.2,10.0.2.3",
            "sm.net=10.0.2.15/33,10.0.2.2,10.0.2.3",
            "sm.net=10.0.2.15/24,10.0.2.2",
            "sm.net=10.0.2.15/24,10.0.2.2,10.0.2.3,1.1.1.1",
            "sm.net=10.0.2.15/24,gw,10.0.2.3",
        ] {
            assert!(NetworkConfig::from_cmdline(bad).is_err(), "{bad}");
        }
        let zero = NetworkConfig::from_cmdline("sm.net=1.2.3.4/0,1.2.3.1,1.2.3.1")
            .unwrap()
            .unwrap();
        assert_eq!(zero.netmask(), Ipv4Addr::UNSPECIFIED);
    }
}
