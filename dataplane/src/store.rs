//! The one place configuration changes: a new config is validated and compiled, then swapped in
//! whole; readers take a cheap `Arc` snapshot per request. A rejected config leaves the last good
//! one in force.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use skein_api::proxy::{InvalidConfig, ProxyConfig};
use tokio::sync::watch;

use crate::runtime::Runtime;

/// Holder of the active configuration.
#[derive(Clone)]
pub struct Store {
    tx: Arc<watch::Sender<Arc<Runtime>>>,
    /// Whether a real configuration has been applied (readiness); false while a proxy fed by
    /// the control plane waits for its first config.
    configured: Arc<AtomicBool>,
}

impl Store {
    /// A store serving `initial` (which must be valid).
    pub fn new(initial: ProxyConfig) -> Result<Self, InvalidConfig> {
        let rt = Runtime::compile(initial)?;
        Ok(Self { tx: Arc::new(watch::channel(Arc::new(rt)).0), configured: Arc::new(AtomicBool::new(true)) })
    }

    /// A store serving nothing until the first [`Store::apply`] (not ready until then).
    pub fn unconfigured() -> Self {
        let rt = Runtime::compile(ProxyConfig::default()).expect("the empty config is valid");
        Self { tx: Arc::new(watch::channel(Arc::new(rt)).0), configured: Arc::new(AtomicBool::new(false)) }
    }

    /// Whether a configuration has been applied.
    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Relaxed)
    }

    /// The active configuration.
    pub fn current(&self) -> Arc<Runtime> {
        self.tx.borrow().clone()
    }

    /// Replaces the active configuration if `config` is valid; otherwise keeps the current one
    /// and returns why.
    pub fn apply(&self, config: ProxyConfig) -> Result<(), InvalidConfig> {
        let rt = Runtime::compile_from(config, Some(&self.current()))?;
        self.tx.send_replace(Arc::new(rt));
        self.configured.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Runtime>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(version: &str, weight: u32) -> ProxyConfig {
        serde_yaml::from_str(&format!(
            "version: '{version}'\nvirtualHosts: [{{name: a, domains: [a], routes: [{{route: [{{cluster: c, weight: {weight}}}, {{cluster: c2, weight: 50}}]}}]}}]\nclusters: [{{name: c}}, {{name: c2}}]\n"
        ))
        .unwrap()
    }

    #[test]
    fn invalid_config_is_rejected_and_the_last_good_one_stays() {
        let store = Store::new(cfg("1", 50)).unwrap();
        let err = store.apply(cfg("2", 70)).unwrap_err();
        assert!(err.to_string().contains("weights sum to 120"), "{err}");
        assert_eq!(store.current().config.version, "1");
        store.apply(cfg("3", 50)).unwrap();
        assert_eq!(store.current().config.version, "3");
    }
}
