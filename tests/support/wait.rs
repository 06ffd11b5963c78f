//! Waiting for a condition instead of sleeping for a guessed time, and the one tracing set-up
//! for tests.

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Some(value)` (returned) or `timeout` passes (an error naming
/// the timeout and what the last probe saw, via `Err(last)` — `probe` returns `Ok(Some(_))`
/// when the condition holds, `Ok(None)` when not yet, `Err(_)` for a failure that no waiting
/// can fix, which is returned at once).
///
/// Use it wherever a test waits for something to happen; a bare sleep either wastes time or
/// fails on a slow machine.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Installs a tracing subscriber for the test process once (later calls do nothing): the
/// filter from `KENNEL_LOG` (alias `RUST_LOG`, default `warn`), output through the test
/// harness's capture so only failing tests show it.
pub fn trace_init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let chosen = kennel_policy::log_env::log_filter(|k| std::env::var(k).ok(), "warn");
        let filter = tracing_subscriber::EnvFilter::try_new(&chosen.directive)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // Another test harness may have installed one already: keep it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_value_or_fails_after_the_timeout() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(5), || {
            n += 1;
            let done = n >= 3;
            async move { Ok(done.then_some(n)) }
        })
        .await
        .expect("met");
        assert_eq!(v, 3);
        let start = tokio::time::Instant::now();
        let e = eventually(Duration::from_millis(100), || async { Ok(None::<()>) })
            .await
            .expect_err("never met");
        assert!(e.to_string().contains("not met within"), "{e}");
        assert!(start.elapsed() >= Duration::from_millis(100));
        let e = eventually(Duration::from_secs(5), || async {
            Err::<Option<()>, _>(anyhow::anyhow!("broken"))
        })
        .await;
        assert!(e.is_err_and(|e| e.to_string() == "broken"));
    }
}
