//! Leader election through a `coordination.k8s.io` Lease, so two operator replicas never
//! reconcile at once, and one control plane replica writes status. Same protocol as client-go's leaderelection: the holder renews
//! `renewTime`; anyone may take a lease whose `renewTime + leaseDurationSeconds` has passed.
//! Writes use the lease's resourceVersion, so two candidates cannot both win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use tracing::{debug, info};

/// Leader-election settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_period: Duration,
}

/// Lost or failed leadership.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica holds the lease now.
    #[error("lease {0} was taken by {1}")]
    Lost(String, String),
    /// The apiserver call failed.
    #[error("lease {0}: {1}")]
    Api(String, #[source] kube::Error),
}

/// A candidate for leadership.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl Elector {
    /// A candidate using `client`.
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &cfg.namespace), cfg }
    }

    fn lease_secs(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaseError> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    return Ok(());
                }
                Ok(false) => debug!("lease held by another replica"),
                Err(LeaseError::Api(_, e)) => debug!(error = %e, "lease attempt failed; retrying"),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(self.cfg.renew_period).await;
        }
    }

    /// Renews the lease until it is lost; returns why. Transient apiserver errors are retried
    /// until the lease would have expired.
    pub async fn hold(&self) -> LeaseError {
        let mut last_renew = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renew = tokio::time::Instant::now(),
                Ok(false) => {
                    let holder = self.holder().await.unwrap_or_default();
                    return LeaseError::Lost(self.cfg.name.clone(), holder);
                }
                Err(e) if last_renew.elapsed() >= self.cfg.lease_duration => return e,
                Err(e) => debug!(error = %e, "lease renewal failed; retrying"),
            }
        }
    }

    /// Gives the lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(&self.cfg.identity) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                let _ = self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await;
            }
        }
    }

    async fn holder(&self) -> Option<String> {
        self.api.get_opt(&self.cfg.name).await.ok().flatten()?.spec?.holder_identity
    }

    /// One round: take or renew the lease if allowed. `Ok(false)`: someone else holds it.
    async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let err = |e| LeaseError::Api(self.cfg.name.clone(), e);
        let now = Timestamp::now();
        let mine = LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.lease_secs()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await.map_err(err)? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.cfg.name.clone()), ..Default::default() },
                spec: Some(mine),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                Err(e) => Err(err(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let held_by_me = spec.holder_identity.as_deref() == Some(&self.cfg.identity);
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => *renewed + SignedDuration::from_secs(i64::from(secs)) < now,
            _ => true,
        };
        if !held_by_me && !expired && spec.holder_identity.is_some() {
            return Ok(false);
        }
        let new_spec = if held_by_me {
            LeaseSpec { renew_time: Some(MicroTime(now)), lease_duration_seconds: Some(self.lease_secs()), ..spec }
        } else {
            LeaseSpec { lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + 1), ..mine }
        };
        lease.spec = Some(new_spec);
        // resourceVersion from the read makes this a compare-and-swap.
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(err(e)),
        }
    }
}
