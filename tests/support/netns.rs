//! Network namespaces for proxy tests: a namespace + veth pair whose far end carries an address
//! from a documentation range (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24). Slots are
//! allocated atomically through the kernel (creating the veth fails if another test process owns
//! the slot), so parallel nextest processes never collide. Drop deletes namespace and veth.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

/// A test namespace reachable from the test process over a /30 veth link.
pub struct Netns {
    /// Namespace name (`kennel-t<slot>`).
    pub name: String,
    /// Host-side interface.
    pub host_if: String,
    /// Address of the host side.
    pub host_ip: Ipv4Addr,
    /// Address inside the namespace (where origins listen).
    pub ns_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn range_in_use(r: [u8; 3]) -> bool {
    let probe = format!("{}.{}.{}.1", r[0], r[1], r[2]);
    match Command::new("ip")
        .args(["-4", "route", "show", "to", "match", &probe])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| !l.starts_with("default") && !l.contains(" dev knt")),
        Err(_) => true,
    }
}

/// Why namespaces cannot be used here (not root, no `ip`), or None.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (`ip`) is not installed".into());
    }
    None
}

impl Netns {
    /// Create a namespace on a free slot.
    pub fn create() -> anyhow::Result<Netns> {
        let ranges = [[192u8, 0, 2], [198, 51, 100], [203, 0, 113]];
        for slot in 0..(3 * 64) {
            let r = ranges[slot / 64];
            // Never shadow a range the host already uses (some CI hosts sit on 192.0.2.0/24):
            // skip a /24 that any non-default route already covers.
            if range_in_use(r) {
                continue;
            }
            let base = ((slot % 64) * 4) as u8;
            let host_if = format!("knt{slot}h");
            let ns_if = format!("knt{slot}n");
            if ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            .is_err()
            {
                continue;
            }
            let ns = Netns {
                name: format!("kennel-t{slot}"),
                host_if: host_if.clone(),
                host_ip: Ipv4Addr::new(r[0], r[1], r[2], base + 1),
                ns_ip: Ipv4Addr::new(r[0], r[1], r[2], base + 2),
            };
            // From here on Drop cleans up, also on error.
            let _ = ip(&["netns", "del", &ns.name]);
            ip(&["netns", "add", &ns.name])?;
            ip(&["link", "set", &ns_if, "netns", &ns.name])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &host_if,
            ])?;
            ip(&["link", "set", &host_if, "up"])?;
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/30", ns.ns_ip),
                "dev",
                &ns_if,
            ])?;
            ip(&["-n", &ns.name, "link", "set", &ns_if, "up"])?;
            ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
            return Ok(ns);
        }
        anyhow::bail!("no free test namespace slot")
    }

    /// Bind a TCP listener inside the namespace on `ns_ip:port` (0 = ephemeral).
    pub fn bind(&self, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
        let path = format!("/var/run/netns/{}", self.name);
        let addr = SocketAddr::from((self.ns_ip, port));
        // setns() applies to the calling thread only: do it on a short-lived thread. The socket
        // stays in the namespace it was created in.
        let l = std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| anyhow::anyhow!("setns {path}: {e}"))?;
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns bind thread panicked"))??;
        Ok(tokio::net::TcpListener::from_std(l)?)
    }
}

impl Netns {
    /// Silently drop TCP packets to `port` inside the namespace (a blackholed destination, for
    /// connect timeouts). The rule disappears with the namespace.
    pub fn drop_tcp(&self, port: u16) -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "iptables",
                "-A",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "DROP",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "iptables in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
