//! The operator's controllers, one kube-runtime `Controller` per concern, run together for
//! one term of leadership and stopped by one shutdown signal. Today: [`mesh`] (install and
//! keep a `MeshControlPlane`); revisions, remote clusters and federation join here.

pub mod mesh;

use std::sync::Arc;

use futures::FutureExt;

use crate::context::Context;

/// Runs every controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    // Each controller gets a clone of the one shutdown signal.
    let shutdown = shutdown.shared();
    futures::future::join_all([mesh::run(ctx, shutdown)]).await;
}
