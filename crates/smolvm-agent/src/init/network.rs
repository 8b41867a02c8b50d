//! Hostname and network setup from the kernel command line:
//! `smolvm.hostname=NAME` and `smolvm.net=1`.
//!
//! Interfaces are configured with the classic `SIOCSIF*` and `SIOCADDRT`
//! ioctls rather than by running `ip`, so any root filesystem works. The
//! addresses are QEMU user-mode networking's defaults.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::log::log;
use crate::sys::cvt;

const GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const NAMESERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// How long to wait for `eth0` to appear after its driver loaded.
const LINK_WAIT: Duration = Duration::from_secs(2);

/// Maximum hostname length accepted by Linux.
const MAX_HOSTNAME: usize = 64;

/// The `smolvm.*` settings of the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Cmdline {
    hostname: Option<String>,
    network: bool,
}

impl Cmdline {
    pub(super) fn read() -> Self {
        Self::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    fn parse(text: &str) -> Self {
        let mut cmdline = Self::default();
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some(("smolvm.hostname", name)) => cmdline.hostname = Some(name.to_string()),
                Some(("smolvm.net", value)) => cmdline.network = value == "1",
                _ => {}
            }
        }
        cmdline
    }
}

/// Applies the hostname and brings up the interfaces: `lo` always, `eth0`
/// only with `smolvm.net=1`. Failures are logged; the sandbox still runs
/// commands without a network.
pub(super) fn configure(cmdline: &Cmdline) {
    if let Some(name) = &cmdline.hostname {
        set_hostname(name);
    }
    let socket = match inet_socket() {
        Ok(socket) => socket,
        Err(e) => return log!("network setup skipped: creating a socket failed: {e}"),
    };
    if let Err(e) = set_up(&socket, "lo") {
        log!("bringing up lo failed: {e}");
    }
    if cmdline.network {
        if let Err(e) = configure_eth0(&socket) {
            log!("configuring eth0 failed: {e}");
        }
        write_resolv_conf();
    }
}

fn set_hostname(name: &str) {
    let valid = !name.is_empty()
        && name.len() <= MAX_HOSTNAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return log!("ignoring invalid hostname {name:?}");
    }
    // SAFETY: the pointer and length describe `name`'s bytes.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        log!(
            "setting the hostname failed: {}",
            io::Error::last_os_error()
        );
    }
    if let Err(e) = fs::write("/etc/hostname", format!("{name}\n")) {
        log!("writing /etc/hostname failed: {e}");
    }
}

fn write_resolv_conf() {
    // The file may be a dangling symlink into /run (systemd-resolved).
    let _ = fs::remove_file("/etc/resolv.conf");
    if let Err(e) = fs::write("/etc/resolv.conf", format!("nameserver {NAMESERVER}\n")) {
        log!("writing /etc/resolv.conf failed: {e}");
    }
}

fn configure_eth0(socket: &OwnedFd) -> io::Result<()> {
    let start = Instant::now();
    while !Path::new("/sys/class/net/eth0").exists() {
        if start.elapsed() > LINK_WAIT {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no eth0 interface"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    set_address(socket, "eth0", libc::SIOCSIFADDR, GUEST_ADDRESS)?;
    set_address(socket, "eth0", libc::SIOCSIFNETMASK, NETMASK)?;
    set_up(socket, "eth0")?;
    add_default_route(socket, GATEWAY)
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded, so `fd` is open and has no other owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn interface_request(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data (a name array and a union of plain
    // structs), for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // Names are short constants; the last byte stays NUL.
    for (slot, byte) in request
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *slot = byte as libc::c_char;
    }
    request
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain structs, and
    // the kernel reads an AF_INET sockaddr as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn set_address(
    socket: &OwnedFd,
    name: &str,
    request: libc::c_ulong,
    address: Ipv4Addr,
) -> io::Result<()> {
    let mut ifreq = interface_request(name);
    ifreq.ifr_ifru.ifru_addr = sockaddr(address);
    // SAFETY: `ifreq` is a valid ifreq that outlives the call; SIOCSIFADDR
    // and SIOCSIFNETMASK read its name and address.
    cvt(unsafe { libc::ioctl(socket.as_raw_fd(), request, &ifreq) }).map(drop)
}

fn set_up(socket: &OwnedFd, name: &str) -> io::Result<()> {
    let mut ifreq = interface_request(name);
    // SAFETY: `ifreq` is a valid, writable ifreq; SIOCGIFFLAGS fills in
    // its flags.
    cvt(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifreq) })?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the union contains the flags.
    let flags = unsafe { ifreq.ifr_ifru.ifru_flags };
    ifreq.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: `ifreq` is a valid ifreq; SIOCSIFFLAGS reads name and flags.
    cvt(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &ifreq) }).map(drop)
}

fn add_default_route(socket: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    // SAFETY: rtentry is plain data (numbers, sockaddrs and a nullable
    // device-name pointer), for which all zeroes is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: `route` is a valid rtentry that outlives the call.
    match cvt(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCADDRT, &route) }) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_reads_smolvm_settings() {
        let cmdline = Cmdline::parse("console=ttyS0 quiet smolvm.hostname=box-1 smolvm.net=1");
        assert_eq!(
            cmdline,
            Cmdline {
                hostname: Some("box-1".into()),
                network: true
            }
        );
    }

    #[test]
    fn cmdline_without_settings_is_default() {
        assert_eq!(
            Cmdline::parse("console=ttyS0 smolvm.net=0"),
            Cmdline::default()
        );
    }
}
