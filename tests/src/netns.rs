//! Network namespaces for link faults: each broker in a namespace of its
//! own, joined to the test's namespace by a veth pair on one bridge, so a
//! test can cut one broker off from every other (and from itself) by
//! taking its link down, and heal it by bringing it back.
//!
//! ```text
//!   test process (root namespace) ── bridge 10.211.N.254/24
//!        ├── veth ── namespace 1: broker 1 on 10.211.N.1
//!        ├── veth ── namespace 2: broker 2 on 10.211.N.2
//!        └── veth ── namespace 3: broker 3 on 10.211.N.3
//! ```
//!
//! Needs root and `ip` (iproute2). Names carry the test process's id, so
//! tests in parallel processes never share one; everything is deleted on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

/// A bridge and one namespace per broker.
pub struct Lab {
    tag: String,
    subnet: u8,
    count: u8,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {} (network namespace tests need root)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Lab {
    /// Namespaces 1..=count on a new bridge.
    pub fn new(count: u8) -> Lab {
        let pid = std::process::id();
        let lab = Lab {
            tag: format!("{:x}", pid % 0xfffff),
            subnet: (pid % 250) as u8 + 1,
            count,
        };
        let bridge = lab.bridge();
        ip(&["link", "add", "name", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        let gateway = format!("10.211.{}.254/24", lab.subnet);
        ip(&["addr", "add", &gateway, "dev", &bridge]);
        for i in 1..=count {
            let (ns, outside, inside) =
                (lab.namespace(i), lab.veth(i), format!("{}p", lab.veth(i)));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            ip(&["link", "set", &inside, "netns", &ns]);
            ip(&["link", "set", &outside, "master", &bridge]);
            ip(&["link", "set", &outside, "up"]);
            let address = format!("{}/24", lab.address(i));
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &address, "dev", &inside,
            ]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        lab
    }

    fn bridge(&self) -> String {
        format!("slb{}", self.tag)
    }

    fn veth(&self, i: u8) -> String {
        format!("slv{}x{i}", self.tag)
    }

    /// The name of namespace `i` (for `ip netns exec`).
    pub fn namespace(&self, i: u8) -> String {
        format!("slns{}x{i}", self.tag)
    }

    /// The address of namespace `i`.
    pub fn address(&self, i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 211, self.subnet, i))
    }

    /// Cuts namespace `i` off: nothing reaches it or leaves it.
    pub fn cut(&self, i: u8) {
        ip(&["link", "set", &self.veth(i), "down"]);
    }

    /// Restores namespace `i`'s link.
    pub fn heal(&self, i: u8) {
        ip(&["link", "set", &self.veth(i), "up"]);
    }

    /// Runs `f` on a new thread that joined namespace `i`: sockets it opens
    /// are that namespace's (a client beside the broker, on its side of a cut).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        i: u8,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.namespace(i));
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns(2) on a namespace file we hold open, for this
            // thread only; no memory is shared with the call.
            let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 1..=self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.namespace(i)])
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &self.veth(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}
