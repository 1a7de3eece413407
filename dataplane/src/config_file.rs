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
}

/// Reads and parses `path`.
pub fn read(path: &Path) -> Result<ProxyConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read(path.into(), e))?;
    serde_yaml::from_str(&text).map_err(|e| LoadError::Parse(path.into(), e))
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
    let mut last = fingerprint(&path, &store);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
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
