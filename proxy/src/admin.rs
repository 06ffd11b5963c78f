//! Admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/policy` (JSON).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Serve admin requests until `stop`.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let s = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let s = s.clone();
                async move { Ok::<_, Infallible>(route(&s, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn route<B>(s: &Shared, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            s.metrics.render(s.store.generation()),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => {
            if s.ready.load(Ordering::Relaxed) {
                (200, "text/plain", "ready\n".to_string())
            } else {
                (503, "text/plain", "draining\n".to_string())
            }
        }
        "/policy" => (200, "application/json", policy_json(s)),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz, /policy\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    resp
}

/// The `/policy` document.
pub fn policy_json(s: &Shared) -> String {
    let p = s.store.current();
    let st = p.stats();
    let loaded = *s.loaded_at.lock().unwrap_or_else(|e| e.into_inner());
    serde_json::json!({
        "version": p.version_hash(),
        "generation": s.store.generation(),
        "loaded_at": crate::log::rfc3339(loaded),
        "mode": format!("{:?}", p.mode()).to_lowercase(),
        "primary_file": p.primary_file().map(|f| f.display().to_string()),
        "source_files": p.source_files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "counts": {
            "allow_patterns": st.allow_patterns,
            "deny_patterns": st.deny_patterns,
            "rules": st.rules,
            "cidrs": st.cidrs,
            "routes": st.routes,
        },
        "live_connections": s.registry.len(),
    })
    .to_string()
}
