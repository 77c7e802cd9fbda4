//! A primary on "its own host": a network namespace joined to the root namespace by a veth pair, so
//! that a test can cut the link between pgclone and the primary (and restore it) the way a network
//! failure would, without touching any other test's traffic. Names and subnets are picked at random and
//! reserved by creating the namespace, so tests that each make one run in parallel; Drop removes
//! everything (processes inside, veth, route, namespace).

use super::lab::*;
use super::process::*;
use rustix::process::Signal;
use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Metric of the per-namespace blackhole route (see `Netns::new`).
const BLACKHOLE_METRIC: &str = "1000";

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).expect("getrandom");
    u32::from_ne_bytes(b)
}

/// A network namespace `g5ns<i>` with a veth pair: `g5h<i>` (root namespace, `host_addr`) and `g5n<i>`
/// (inside, `ns_addr`), a /30 of 10.231.0.0/16 chosen by `i`; loopback up inside; a blackhole route for
/// the /30 in the root namespace so that nothing for it ever leaves the machine. Creating the
/// namespace under a name derived from `i` is what reserves the subnet among parallel tests. Dropping it
/// kills what still runs inside, deletes the veth pair and the namespace.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_addr: String,
    pub ns_addr: String,
}

impl Netns {
    pub fn new() -> Netns {
        assert!(
            running_as_root(),
            "the fault tests need root: they create network namespaces, veth pairs and tmpfs mounts"
        );
        let mut last = String::new();
        for _ in 0..100 {
            let i = random_u32() % 16384;
            let name = format!("g5ns{i}");
            let made = run_bounded(Command::new("ip").args(["netns", "add", &name]), Duration::from_secs(30));
            if !made.success() {
                last = made.stderr.trim().to_string();
                continue; // taken by a parallel test
            }
            let (a, b) = (i / 64, (i % 64) * 4);
            let ns = Netns {
                host_if: format!("g5h{i}"),
                ns_if: format!("g5n{i}"),
                host_addr: format!("10.231.{a}.{}", b + 1),
                ns_addr: format!("10.231.{a}.{}", b + 2),
                name,
            };
            let veth = run_bounded(
                Command::new("ip").args(["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns.ns_if]),
                Duration::from_secs(30),
            );
            if !veth.success() {
                // A leftover of a killed earlier run; Drop removes the namespace, try another one.
                println!("veth {} not created ({}), trying another subnet", ns.host_if, veth.stderr.trim());
                continue;
            }
            // Safety net: while the veth's own route is gone (link cut), traffic to the /30 must vanish
            // here, never follow the default route out of this machine. Lower priority than the
            // link's route (metric 0), so it only matters while that one is absent.
            let guard = run_bounded(
                Command::new("ip").args(["route", "add", "blackhole", &ns.subnet(), "metric", BLACKHOLE_METRIC]),
                Duration::from_secs(30),
            );
            if !guard.success() {
                println!(
                    "blackhole route for {} not added ({}), trying another subnet",
                    ns.subnet(),
                    guard.stderr.trim()
                );
                continue;
            }
            root_run("ip", &["link", "set", &ns.ns_if, "netns", &ns.name]);
            root_run("ip", &["addr", "add", &format!("{}/30", ns.host_addr), "dev", &ns.host_if]);
            root_run("ip", &["link", "set", &ns.host_if, "up"]);
            let inside = |args: &[&str]| {
                let mut a = vec!["netns", "exec", &ns.name, "ip"];
                a.extend_from_slice(args);
                root_run("ip", &a);
            };
            inside(&["addr", "add", &format!("{}/30", ns.ns_addr), "dev", &ns.ns_if]);
            inside(&["link", "set", &ns.ns_if, "up"]);
            inside(&["link", "set", "lo", "up"]);
            wait_for("the veth pair to pass traffic", Duration::from_secs(10), || {
                // A TCP connect to a closed port inside answers at once with RST once the link is up.
                match std::net::TcpStream::connect_timeout(
                    &format!("{}:9", ns.ns_addr).parse().unwrap(),
                    Duration::from_millis(500),
                ) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            });
            println!("netns {}: {} ({}) <-> {} ({})", ns.name, ns.host_if, ns.host_addr, ns.ns_if, ns.ns_addr);
            return ns;
        }
        panic!("could not create a network namespace g5ns<N> with its veth pair after 100 tries (last: {last})");
    }

    /// The /30 of the veth pair.
    pub fn subnet(&self) -> String {
        let (base, last) = self.host_addr.rsplit_once('.').unwrap();
        format!("{base}.{}/30", last.parse::<u32>().unwrap() - 1)
    }

    /// Cut the link: the root namespace's end of the veth goes down. Its route goes with it, and the
    /// blackhole route then swallows every packet for the /30 (silently, as a cut cable would).
    pub fn cut(&self) {
        root_run("ip", &["link", "set", &self.host_if, "down"]);
        // The primary's host must really be out of reach now.
        let probe = std::net::TcpStream::connect_timeout(
            &format!("{}:9", self.ns_addr).parse().unwrap(),
            Duration::from_millis(500),
        );
        assert!(
            probe.as_ref().is_err_and(|e| e.kind() != std::io::ErrorKind::ConnectionRefused),
            "{} still answers after the cut: {probe:?}",
            self.ns_addr
        );
        println!("netns {}: link {} down ({})", self.name, self.host_if, probe.unwrap_err());
    }

    pub fn restore(&self) {
        root_run("ip", &["link", "set", &self.host_if, "up"]);
        println!("netns {}: link {} up", self.name, self.host_if);
    }

    /// Pids of processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = run_bounded(Command::new("ip").args(["netns", "pids", &self.name]), Duration::from_secs(30));
        out.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Everything in the namespace was started by this test (its PostgreSQL, sshd, their children).
        for pid in self.pids() {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).stderr(Stdio::null()).status();
        let _ = Command::new("ip")
            .args(["route", "del", "blackhole", &self.subnet(), "metric", BLACKHOLE_METRIC])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// `program` inside namespace `ns_name` as the lab user (`ip netns exec` + `setpriv`), with the lab's
/// clean environment and working directory.
pub fn ns_cmd(ns_name: &str, lab: &Lab, program: impl AsRef<OsStr>) -> Command {
    let template = lab.cmd("true");
    let user = lab.user();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns_name, "setpriv"])
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--clear-groups", "--"])
        .arg(program)
        .env_clear()
        .current_dir(lab.path());
    for (k, v) in template.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd
}
