//! Network namespaces for end-to-end tests: created with `ip netns`, wired with veth pairs,
//! configured with `ip` and `iptables` inside them, and deleted on drop (even when the test
//! fails). Sockets for in-process servers are created inside a namespace by a thread that
//! enters it with `setns(2)`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

/// Why namespace tests cannot run here, if they cannot: not root, or no `ip`/`iptables`.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new(tool).arg("-V").output().is_ok()
            || Command::new(tool).arg("--version").output().is_ok();
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    None
}

/// A set of namespaces named `<prefix>-<name>`, deleted together on drop.
pub struct Lab {
    prefix: String,
    names: Vec<String>,
    etc: Vec<PathBuf>,
}

impl Lab {
    /// A lab whose namespaces share a prefix unique to this process.
    pub fn new(tag: &str) -> Lab {
        let prefix = format!("eg{}{tag}", std::process::id() % 100_000);
        Lab {
            prefix,
            names: Vec::new(),
            etc: Vec::new(),
        }
    }

    /// The full name of namespace `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Creates a namespace with its loopback up.
    pub fn add(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run("ip", &["netns", "add", &ns]);
        self.names.push(ns.clone());
        self.sh(name, "ip link set lo up");
        ns
    }

    /// A veth pair between two namespaces: `a_if` in `a` with `a_addr`, `b_if` in `b` with
    /// `b_addr` (CIDR notation), both up.
    pub fn link(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        run(
            "ip",
            &[
                "-n", &na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &nb,
            ],
        );
        self.sh(
            a,
            &format!("ip addr add {a_addr} dev {a_if} && ip link set {a_if} up"),
        );
        self.sh(
            b,
            &format!("ip addr add {b_addr} dev {b_if} && ip link set {b_if} up"),
        );
    }

    /// Runs a shell command inside a namespace; panics with its output if it fails.
    pub fn sh(&self, name: &str, script: &str) {
        let ns = self.ns(name);
        run("ip", &["netns", "exec", &ns, "sh", "-ec", script]);
    }

    /// Gives a namespace its own `/etc/resolv.conf` (`ip netns exec` bind-mounts
    /// `/etc/netns/<ns>/resolv.conf`).
    pub fn resolv_conf(&mut self, name: &str, nameserver: &str) {
        let dir = PathBuf::from("/etc/netns").join(self.ns(name));
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:1 attempts:1\n"),
        )
        .expect("write resolv.conf");
        self.etc.push(dir);
    }

    /// Runs `f` on a thread inside the namespace, so the sockets it creates live there.
    pub fn inside<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> T {
        let path = PathBuf::from("/run/netns").join(self.ns(name));
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns file");
            enter(&file).expect("setns");
            f().expect("create socket inside the namespace")
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for dir in &self.etc {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Moves the calling thread into the network namespace `file` refers to.
#[allow(unsafe_code)]
fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a file descriptor we hold open; it changes only the calling thread's
    // network namespace, and this thread exists only to create sockets there.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
