//! The operator's controllers, one kube-runtime `Controller` per concern, run together for
//! one term of leadership and stopped by one shutdown signal: [`mesh`] (install and keep a
//! `MeshControlPlane`) and [`federation`] (remote clusters and their `.global` services);
//! revisions join here.

pub mod federation;
pub mod mesh;

use std::sync::Arc;

use futures::FutureExt;

use crate::context::Context;

/// Runs every controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    federation: federation::Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Each controller gets a clone of the one shutdown signal.
    let shutdown = shutdown.shared();
    tokio::join!(mesh::run(ctx.clone(), shutdown.clone()), federation::run(ctx, federation, shutdown));
}
