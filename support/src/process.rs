//! Process helpers both binaries need: when to shut down, and what this replica is called.

/// The machine's (in a pod: the pod's) hostname; `unknown` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The identity a replica holds a Lease under: `POD_NAME` when set (the downward API), else
/// `<hostname>-<pid>`, unique among processes on one machine.
pub fn replica_identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()))
}

/// Resolves on the first SIGTERM (the kubelet stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler only Ctrl-C stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_named_by_its_pod_or_its_host_and_pid() {
        let id = replica_identity();
        match std::env::var("POD_NAME") {
            Ok(pod) if !pod.is_empty() => assert_eq!(id, pod),
            _ => assert_eq!(id, format!("{}-{}", hostname(), std::process::id())),
        }
        assert!(!hostname().is_empty());
    }
}
