//! File-fed configuration: the proxy config as YAML or JSON (JSON is YAML), reloaded when the
//! file changes, when a certificate file it names changes (rotation), or on SIGHUP. An
//! unreadable or invalid file is reported and the last good config stays in force. Open
//! connections keep the certificate they were made with; new ones use the new one.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use skein_api::proxy::ProxyConfig;
use tracing::{error, info};

use crate::{metrics::Metrics, store::Store};

/// Why a config file was not applied.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is not a valid proxy config document.
    #[error("parse {0}: {1}")]
    Parse(PathBuf, serde_yaml::Error),
    /// The config parsed but is invalid.
    #[error("{0}: invalid config: {1}")]
    Invalid(PathBuf, skein_api::proxy::InvalidConfig),
    /// The file is empty, or a document without `listeners` (a truncated write looks like
    /// this, and applying it would take the workload off the network).
    #[error("{0}: {1}: refused (write `listeners: []` to serve nothing on purpose)")]
    Empty(PathBuf, &'static str),
}

/// Reads and parses `path`. An empty file, or a document that does not say `listeners`, is
/// refused: a deliberate config with no listeners says `listeners: []`.
pub fn read(path: &Path) -> Result<ProxyConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read(path.into(), e))?;
    if text.trim().is_empty() {
        return Err(LoadError::Empty(path.into(), "the file is empty"));
    }
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| LoadError::Parse(path.into(), e))?;
    match &doc {
        serde_yaml::Value::Mapping(m) if m.contains_key("listeners") => {}
        serde_yaml::Value::Mapping(_) => return Err(LoadError::Empty(path.into(), "listeners: missing")),
        serde_yaml::Value::Null => return Err(LoadError::Empty(path.into(), "the document is empty")),
        _ => {}
    }
    serde_yaml::from_value(doc).map_err(|e| LoadError::Parse(path.into(), e))
}

/// Reads `path` and applies it to `store`.
pub fn reload(path: &Path, store: &Store) -> Result<(), LoadError> {
    let cfg = read(path)?;
    let version = cfg.version.clone();
    store.apply(cfg).map_err(|e| LoadError::Invalid(path.into(), e))?;
    info!(version, "configuration applied");
    Ok(())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Modification times of the config file and every certificate or key file the active config
/// names: a change to any of them means a reload.
fn fingerprint(path: &Path, store: &Store) -> Vec<Option<SystemTime>> {
    let rt = store.current();
    let cfg = &rt.config;
    let mut files: Vec<&Path> = vec![path];
    if let Some(id) = &cfg.identity {
        files.extend([id.cert_chain.as_path(), id.private_key.as_path(), id.root_cert.as_path()]);
    }
    for tls in cfg.listeners.iter().filter_map(|l| l.server_tls.as_ref()) {
        for c in tls.credentials.iter().filter(|c| c.inline.is_none()) {
            files.extend([c.cert_chain.as_path(), c.private_key.as_path()]);
        }
        files.extend(tls.ca_certificates.as_deref());
    }
    files.into_iter().map(mtime).collect()
}

/// Watches `path` and the certificate files it names (polling modification times every
/// `interval`, plus SIGHUP) and reloads on change. Runs until the task is dropped.
pub async fn watch(path: PathBuf, store: Store, metrics: Metrics, interval: Duration) {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    watch_with(path, store, metrics, interval, hup).await;
}

/// [`watch`] with a SIGHUP stream registered by the caller: registered as the process starts,
/// a SIGHUP that comes before the config was first read reloads instead of killing the
/// process (the default action).
pub async fn watch_with(
    path: PathBuf,
    store: Store,
    metrics: Metrics,
    interval: Duration,
    #[cfg(unix)] mut hup: Option<tokio::signal::unix::Signal>,
) {
    let mut last = fingerprint(&path, &store);
    loop {
        #[cfg(unix)]
        let forced = match hup.as_mut() {
            Some(h) => tokio::select! {
                _ = h.recv() => true,
                _ = tokio::time::sleep(interval) => false,
            },
            None => {
                tokio::time::sleep(interval).await;
                false
            }
        };
        #[cfg(not(unix))]
        let forced = {
            tokio::time::sleep(interval).await;
            false
        };
        let now = fingerprint(&path, &store);
        if !forced && now == last {
            continue;
        }
        if let Err(e) = reload(&path, &store) {
            metrics.config_rejected.inc();
            error!(error = %e, "configuration rejected; the last good configuration stays in force");
        }
        // After a reload the file set may differ (a new config names other files).
        last = fingerprint(&path, &store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<ProxyConfig, LoadError> {
        let dir = std::env::temp_dir().join(format!("skein-config-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.yaml");
        std::fs::write(&path, text).unwrap();
        let r = read(&path);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn an_empty_or_truncated_file_is_refused_and_no_listeners_must_be_said() {
        for (text, why) in [
            ("", "the file is empty"),
            ("  \n", "the file is empty"),
            ("{}", "listeners: missing"),
            ("version: v2\n", "listeners: missing"),
            ("---\n", "the document is empty"),
        ] {
            let e = read_text(text).unwrap_err();
            assert!(matches!(e, LoadError::Empty(_, w) if w == why), "{text:?}: {e}");
            assert!(e.to_string().contains("listeners: []"), "the error says how to mean it: {e}");
        }
        let cfg = read_text("listeners: []\n").expect("a deliberate empty config");
        assert!(cfg.listeners.is_empty());
        assert!(matches!(read_text("listeners: [\n"), Err(LoadError::Parse(..))), "truncated YAML");
    }
}
