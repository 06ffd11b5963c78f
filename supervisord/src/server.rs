//! The accept loop: one task per connection, peer credentials checked per connection, graceful
//! drain on shutdown (stop accepting, let in-flight requests and exec streams finish).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::api::{self, Caller};
use crate::auth::Peer;
use crate::error::ApiError;
use crate::registry::Daemon;

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, asks open
/// connections to finish their current request, and waits for them and for running execs.
pub async fn serve(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    shutdown: impl Future<Output = ()>,
) {
    serve_watched(listener, daemon, shutdown, None).await;
}

/// [`serve`], pinging `watchdog` from this loop (see [`crate::daemon::run_watched`]) while it
/// accepts; no pings while draining (systemd stops the watchdog once `STOPPING=1` is sent).
pub async fn serve_watched(
    listener: UnixListener,
    daemon: Arc<Daemon>,
    shutdown: impl Future<Output = ()>,
    watchdog: Option<crate::daemon::Watchdog>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = daemon.tasks().clone();
    tokio::pin!(shutdown);
    let mut ping = watchdog.as_ref().map(|w| {
        let mut every = tokio::time::interval(w.every());
        // After a stall, one ping, not a burst that would hide it.
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every
    });
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            () = next_tick(&mut ping) => {
                if let Some(w) = &watchdog {
                    w.ping();
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: log and keep serving; back off briefly so we do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = match Peer::of(&stream) {
            Ok(peer) => daemon
                .authorizer()
                .authorize(&peer)
                .map(|()| peer)
                .map_err(|d| Arc::new(ApiError::Forbidden(d))),
            Err(e) => Err(Arc::new(ApiError::PeerUnknown(e))),
        };
        if let Err(e) = &peer {
            tracing::warn!(error = %e, "refusing connection");
        }
        let caller = Caller { peer };
        let daemon = daemon.clone();
        let mut stop = stop_rx.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let daemon = daemon.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(api::handle(daemon, caller, req).await) }
            });
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Close the listening socket now, so new clients are refused instead of queued.
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    daemon.begin_shutdown();
    let _ = stop_tx.send(true);
    tracker.close();
    tracker.wait().await;
    tracing::info!("all connections closed");
}

/// The next watchdog tick, or never without a watchdog.
async fn next_tick(ping: &mut Option<tokio::time::Interval>) {
    match ping {
        Some(every) => {
            every.tick().await;
        }
        None => std::future::pending().await,
    }
}
