//! CONNECT, step by step: admit (decide, resolve + guard), dial the checked address, reply
//! `200`, inspect the client's first flight (SNI check, `sni`), relay both ways (`relay`:
//! splice(2) for direct tunnels, half-close kept), finish (one access-log line, `log`).

use std::net::SocketAddr;

use bytes::BytesMut;
use kennel_policy::{Host, Target};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::dial;
use crate::head::{Framing, RequestHead};
use crate::log::{self, Access, Ended, Kind, Outcome};
use crate::respond::Failure;
use crate::sni::{self, FirstFlight, Refusal};
use crate::tunnels::Registration;

/// Handle one CONNECT request; the client connection is consumed.
// Debug level: at the default info level an info span formatted its two fields and was
// entered and left on every poll of every tunnel, for the one info event inside it (an SNI
// refusal, which names its target itself).
#[tracing::instrument(level = "debug", skip_all, fields(client = %peer, target = %head.target()))]
pub async fn handle(
    shared: &Shared,
    mut client: TcpStream,
    buf: BytesMut,
    head: RequestHead,
    peer: SocketAddr,
    reg: &Registration<'_>,
    hard_stop: &CancellationToken,
) {
    let mut rec = Access::new(Kind::Connect, peer, "CONNECT");
    let outcome = match tunnel(shared, &mut client, buf, &head, reg, hard_stop, &mut rec).await {
        Ok(ended) => ended,
        Err(f) => {
            crate::respond::refuse(shared, &mut client, rec.target.as_ref(), &f).await;
            let _ = client.shutdown().await;
            Outcome::Failed(f)
        }
    };
    log::finish(shared, rec, outcome);
}

/// The protocol: admit → dial → reply → inspect the first flight → relay. A `Failure` before
/// the reply is answered with its error response by [`handle`].
async fn tunnel<'h>(
    shared: &Shared,
    client: &mut TcpStream,
    mut buf: BytesMut,
    head: &'h RequestHead,
    reg: &Registration<'_>,
    hard_stop: &CancellationToken,
    rec: &mut Access<'h>,
) -> Result<Outcome, Failure> {
    rec.unparsed = Some(head.target());
    let target = parse_target(head)?;
    rec.target = Some(target.clone());
    rec.unparsed = None;
    if head.framing != Framing::None {
        return Err(Failure::BadRequest("CONNECT with a request body".into()));
    }
    let generation = shared.store.generation();
    let (decision, route) = crate::admit::admit(shared, &shared.store.current(), &target).await?;
    rec.admitted(decision, &route);
    // Boxed: the dial future (resolver, upstream handshakes) is the largest state of this
    // function, and a future is as large as its largest state for the whole tunnel's life.
    let dialed = Box::pin(dial::connect(shared, &route, &target, false)).await?;
    rec.resolved = dialed.resolved;
    reg.set_target(&target, dialed.resolved.map(|a| a.ip()));
    // A reload between the decision and the registration would have missed this connection:
    // decide again against the policy in force now.
    if let Some(f) = crate::admit::recheck(shared, generation, &target, dialed.resolved) {
        return Err(f);
    }
    rec.status = 200;
    if reply_established(client).await.is_err() {
        return Ok(Outcome::Ended(Ended::Done));
    }
    let origin = match &dialed.conn {
        dial::Conn::Tcp(t) => Some(t),
        dial::Conn::Upstream(_) => None,
    };
    let inspect = sni::Inspect {
        target: &target,
        required: sni_required(shared, &target),
        allow_ech: shared.config.allow_ech,
        timeout: shared.config.limits.idle_timeout(),
        revoked: &reg.cancel,
        hard_stop,
    };
    match sni::inspect_first_flight(client, &mut buf, origin, inspect).await {
        FirstFlight::Pass(sni) => rec.sni = sni,
        // Not TLS, but the client spoke first: an HTTP/1.x request line makes it an HTTP
        // connection whose every request must name the CONNECT target (`tunnel_http`).
        FirstFlight::Refused(r @ Refusal::NotTls { .. }) if !buf.is_empty() => {
            let limits = &shared.config.limits;
            let http = crate::tunnel_http::sniff(
                client,
                &mut buf,
                limits.max_head_bytes,
                limits.header_timeout(),
            )
            .await;
            if !http {
                tracing::info!(reason = %r.reason(), "{r}");
                return Ok(Outcome::Refused(r));
            }
            let cx = crate::tunnel_http::Tunnel {
                target: &target,
                decision: rec.admitted.clone(),
                upstream: rec.upstream.clone(),
                resolved: rec.resolved,
                peer: rec.client,
                revoked: &reg.cancel,
                hard_stop,
            };
            // Boxed like the dial: the exchange state of HTTP inside a tunnel (4,992-byte tunnel
            // future with it inline, 3,336 without) would otherwise size every tunnel's future,
            // spliced ones included, for the tunnel's whole life.
            let served = Box::pin(crate::tunnel_http::serve(
                shared,
                client,
                buf,
                dialed.conn,
                cx,
            ))
            .await;
            // Each request inside was logged and counted on its own line.
            rec.bytes_up = served.up;
            rec.bytes_down = served.down;
            return Ok(Outcome::Ended(served.end));
        }
        FirstFlight::Refused(r) => return Ok(Outcome::Refused(r)),
        FirstFlight::Ended(e) => return Ok(Outcome::Ended(e)),
    }
    let limits = crate::relay::Limits {
        idle: shared.config.limits.idle_timeout(),
        buffer_bytes: shared.config.limits.buffer_bytes,
        revoked: &reg.cancel,
        hard_stop,
    };
    let out = crate::relay::tunnel(client, dialed.conn, buf, &limits).await;
    rec.bytes_up = out.up;
    rec.bytes_down = out.down;
    shared.metrics.add_bytes(out.up, out.down, rec.rule());
    Ok(Outcome::Ended(out.end.into()))
}

/// The CONNECT target: an authority (`host:port`).
fn parse_target(head: &RequestHead) -> Result<Target, Failure> {
    Target::parse_authority(head.target()).map_err(|e| {
        Failure::BadRequest(format!("invalid CONNECT target {:?}: {e}", head.target()))
    })
}

/// Whether the first flight must be a ClientHello naming the target: `require_sni`, a name
/// (an IP-literal target has no name to compare), and not a port in `plaintext_tunnel_ports`
/// (those may carry anything, and are spliced at once so server-first protocols also work
/// through upstream proxies).
fn sni_required(shared: &Shared, target: &Target) -> bool {
    shared.config.require_sni
        && matches!(target.host, Host::Name(_))
        && !shared.config.plaintext_tunnel_ports.contains(&target.port)
}

async fn reply_established(client: &mut TcpStream) -> std::io::Result<()> {
    client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
}
