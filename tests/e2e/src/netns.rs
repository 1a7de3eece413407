//! Real pods' network namespaces, entered from the test: a request sent from inside a pod's
//! namespace is, for the network, a request of that pod (its sidecar's capture rules apply).

use std::process::Command;

/// Runs `f` on a thread inside the network namespace at `path` (the test's other threads stay
/// where they are).
fn run_in<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// The network namespace of a real pod (containerd's `/run/netns/cni-*`), found by the pod's
/// address; not removed on drop (the pod owns it). Code run in it is a process of that pod as
/// far as the network is concerned: the sidecar's capture rules apply to it.
pub struct PodNetns {
    /// The namespace's path.
    pub path: String,
    /// The pod's address.
    pub ip: String,
}

impl PodNetns {
    /// The namespace holding `ip` (panics when no pod namespace has it).
    pub fn of(ip: &str) -> Self {
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .expect("/run/netns")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("cni-"))
            .collect();
        names.sort();
        for name in names {
            let out = Command::new("ip").args(["-n", &name, "-o", "-4", "addr", "show"]).output();
            let found = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/")));
            if found {
                return Self { path: format!("/run/netns/{name}"), ip: ip.to_string() };
            }
        }
        panic!("no pod network namespace holds {ip}");
    }

    /// Runs `f` on a thread inside the pod's namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(self.path.clone(), f)
    }
}
