//! Runs the agent: the API on a listener, the persistence and forecasting
//! (with the assurance loop and configuration-model refit) loops beside it, until told to stop; the history is flushed on the way out.

use crate::app::agent::Agent;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the API on `listener` until `shutdown` turns true, persisting
/// every interval and once more on the way out.
pub async fn serve(
    agent: Arc<Agent>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let this = agent;
    let persister = {
        let agent = this.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(agent.config.persist_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                n += 1;
                let a = agent.clone();
                // Prune old minutes about every ten minutes of persists.
                let prune = n % (600 / agent.config.persist_interval.as_secs().max(1)).max(1) == 1;
                let _ =
                    tokio::task::spawn_blocking(move || a.persist(crate::now_secs(), prune)).await;
            }
        })
    };
    {
        let agent = this.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            // Once a minute of the agent's clock (trace time in a replay).
            let mut tick =
                tokio::time::interval(crate::clock::wall_duration(Duration::from_secs(60)));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                let a = agent.clone();
                // The configuration model's refit (when due) rides the same
                // blocking thread: both are minutes-scale background work.
                let _ = tokio::task::spawn_blocking(move || {
                    let now = crate::now_secs();
                    a.refresh_forecasts(now);
                    a.assure(now);
                    a.learning.maybe_refit(now, &a.metrics);
                })
                .await;
            }
        });
    }
    let app = crate::app::api::router(this.clone());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), persister).await;
    let agent = this.clone();
    let _ = tokio::task::spawn_blocking(move || agent.persist(crate::now_secs(), false)).await;
    tracing::info!("history flushed; agent stopped");
    result
}
