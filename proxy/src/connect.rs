//! CONNECT: decide, resolve + guard, dial the checked address, `200`, peek the ClientHello and
//! check SNI, then relay both ways (`relay`: splice(2) for direct tunnels, half-close kept).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use kennel_policy::{Host, Target};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::dial;
use crate::head::RequestHead;
use crate::log::AccessRecord;
use crate::registry::Registration;
use crate::relay::End;
use crate::respond::Failure;
use crate::sni::{self, Peek};

/// Handle one CONNECT request; the client connection is consumed.
#[tracing::instrument(skip_all, fields(client = %peer, target = %head.target))]
pub async fn handle(
    shared: &Shared,
    mut client: TcpStream,
    mut buf: BytesMut,
    head: RequestHead,
    peer: SocketAddr,
    reg: &Registration<'_>,
    hard_stop: &CancellationToken,
) {
    let start = tokio::time::Instant::now();
    let mut rec = AccessRecord {
        client: peer.to_string(),
        method: "CONNECT".into(),
        host: head.target.clone(),
        upstream: "direct".into(),
        ..Default::default()
    };
    let generation = shared.store.generation();
    let policy = shared.store.current();
    let target = match Target::parse_authority(&head.target) {
        Ok(t) => t,
        Err(e) => {
            let f = Failure::BadRequest(format!("invalid CONNECT target {:?}: {e}", head.target));
            return fail(shared, &mut client, &mut rec, None, f, start).await;
        }
    };
    rec.host = target.host.to_string();
    rec.port = target.port;
    if head.framing != crate::head::Framing::None {
        let f = Failure::BadRequest("CONNECT with a request body".into());
        return fail(shared, &mut client, &mut rec, Some(&target), f, start).await;
    }
    let (decision, route) = match crate::admit::admit(shared, &policy, &target).await {
        Ok(a) => a,
        Err(f) => return fail(shared, &mut client, &mut rec, Some(&target), f, start).await,
    };
    rec.rule = decision.rule.as_ref().map(|r| r.to_string());
    rec.reason = decision.reason.as_str().to_string();
    rec.upstream = route.upstream.to_string();
    rec.resolved = route.addrs.first().map(|a| a.to_string());
    // Boxed: the dial future (resolver, upstream handshakes) is the largest state of this
    // function, and a future is as large as its largest state for the whole tunnel's life.
    let dialed = match Box::pin(dial::connect(shared, &route, &target, false)).await {
        Ok(d) => d,
        Err(f) => return fail(shared, &mut client, &mut rec, Some(&target), f, start).await,
    };
    rec.resolved = dialed.resolved.map(|a| a.to_string());
    reg.set_target(&target, dialed.resolved.map(|a| a.ip()));
    // A reload between the decision and the registration would have missed this connection:
    // decide again against the policy in force now.
    if let Some(d) = crate::admit::recheck(shared, generation, &target, dialed.resolved) {
        return fail(shared, &mut client, &mut rec, Some(&target), d, start).await;
    }
    let decision_word = if decision.would_deny {
        "would_deny"
    } else {
        "allow"
    };

    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        rec.decision = decision_word;
        rec.status = 200;
        return finish(shared, rec, start, "connect");
    }
    rec.status = 200;

    // SNI check on the client's first flight (bytes stay in `buf` and are forwarded unchanged).
    // Ports in `plaintext_tunnel_ports` may carry anything (no TLS to check), so they are
    // spliced at once (server-first protocols then also work through upstream proxies).
    let plaintext_ok = shared.config.plaintext_tunnel_ports.contains(&target.port);
    if shared.config.require_sni && matches!(target.host, Host::Name(_)) && !plaintext_ok {
        // A TLS server never speaks first: if the destination sends bytes before the client
        // does (SMTP, FTP, some SSH servers), this is not a TLS tunnel and there is no SNI to
        // check. Only visible for direct connections; through an upstream we wait for the client.
        let origin_tcp: Option<&TcpStream> = match &dialed.conn {
            dial::Conn::Tcp(t) => Some(t),
            dial::Conn::Upstream(_) => None,
        };
        // Readiness alone is not "the origin spoke": it can be spurious, or an EOF / reset.
        // Only bytes actually waiting (peek > 0) count; a closed origin ends the tunnel.
        let origin_speaks_first = async move {
            match origin_tcp {
                Some(t) => {
                    let mut one = [0u8; 1];
                    matches!(t.peek(&mut one).await, Ok(n) if n > 0)
                }
                None => std::future::pending::<bool>().await,
            }
        };
        let peek = tokio::select! {
            p = sni::peek_client_hello(&mut client, &mut buf, shared.config.limits.idle_timeout()) => p,
            spoke = origin_speaks_first => if spoke {
                Ok(Peek::NotTls)
            } else {
                rec.decision = decision_word;
                rec.error = Some("the destination closed before the client sent anything".into());
                return finish(shared, rec, start, "connect");
            },
            _ = reg.cancel.cancelled() => Err(std::io::Error::other("revoked")),
            _ = hard_stop.cancelled() => Err(std::io::Error::other("shutdown")),
        };
        let refuse = match peek {
            // Not TLS: nothing ties the bytes to the CONNECT host (a plain HTTP request can
            // carry any Host header, and shared front ends route by it).
            Ok(Peek::NotTls) => Some((
                "not_tls",
                format!(
                    "the tunnel does not start with a TLS ClientHello and port {} is not in plaintext_tunnel_ports",
                    target.port
                ),
            )),
            Ok(Peek::Tls { sni, ech: true }) if !shared.config.allow_ech => {
                rec.sni = sni;
                Some((
                    "sni_ech",
                    "TLS ClientHello with encrypted_client_hello / encrypted_server_name: the real server name is hidden (allow_ech = false)".to_string(),
                ))
            }
            Ok(Peek::Tls {
                sni: Some(sni),
                ech: _,
            }) => {
                rec.sni = Some(sni.clone());
                match Host::parse(&sni) {
                    Ok(h) if h == target.host => None,
                    _ => Some((
                        "sni_mismatch",
                        format!(
                            "TLS SNI {sni:?} does not match the CONNECT host {}",
                            target.host
                        ),
                    )),
                }
            }
            Ok(Peek::Tls { sni: None, ech: _ }) => {
                Some(("sni_missing", "TLS ClientHello without SNI".to_string()))
            }
            Ok(Peek::Malformed(m)) => {
                Some(("sni_unreadable", format!("unreadable ClientHello: {m}")))
            }
            Err(e) => {
                rec.decision = decision_word;
                rec.reason = "client_error".into();
                rec.error = Some(e.to_string());
                return finish(shared, rec, start, "connect");
            }
        };
        if let Some((reason, msg)) = refuse {
            tracing::info!(reason, "{msg}");
            rec.decision = "deny";
            rec.reason = reason.into();
            rec.error = Some(msg);
            return finish(shared, rec, start, "connect");
        }
    }

    rec.decision = decision_word;
    let limits = crate::relay::Limits {
        idle: shared.config.limits.idle_timeout(),
        buffer_bytes: shared.config.limits.buffer_bytes,
        revoked: &reg.cancel,
        hard_stop,
    };
    let out = crate::relay::tunnel(&mut client, dialed.conn, buf, &limits).await;
    rec.bytes_up = out.up;
    rec.bytes_down = out.down;
    shared
        .metrics
        .add_bytes(rec.bytes_up, rec.bytes_down, rec.rule.as_deref());
    let end = out.end;
    match end {
        End::Done => {}
        End::Idle => rec.error = Some("closed after the idle timeout".into()),
        End::Revoked => {
            shared.metrics.revoked_total.fetch_add(1, Ordering::Relaxed);
            rec.decision = "deny";
            rec.reason = "revoked".into();
            rec.error = Some("closed: a policy reload no longer allows this destination".into());
        }
        End::Shutdown => rec.error = Some("closed by shutdown after the drain deadline".into()),
        End::Error(e) => rec.error = Some(e),
    }
    finish(shared, rec, start, "connect");
}

async fn fail(
    shared: &Shared,
    client: &mut TcpStream,
    rec: &mut AccessRecord,
    target: Option<&Target>,
    f: Failure,
    start: tokio::time::Instant,
) {
    let policy = shared.store.current();
    let _ = client
        .write_all(&f.response(target, shared.policy_shown_as(&policy).as_deref()))
        .await;
    let _ = client.shutdown().await;
    rec.status = f.status();
    if let Some(rule) = f.rule() {
        rec.rule = Some(rule.to_string());
    }
    rec.decision = f.decision();
    rec.reason = f.reason();
    rec.error = Some(f.to_string());
    finish(shared, std::mem::take(rec), start, "connect");
}

/// Write the access-log line and count the decision.
pub fn finish(
    shared: &Shared,
    mut rec: AccessRecord,
    start: tokio::time::Instant,
    kind: &'static str,
) {
    rec.duration_ms = start.elapsed().as_millis() as u64;
    if rec.decision.is_empty() {
        rec.decision = "error";
    }
    shared.metrics.decision(kind, rec.decision, &rec.reason);
    shared.log.write(rec);
}
