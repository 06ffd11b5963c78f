//! Host notifications on the real Docker engine (issue 12 item 5): `kennel-notify` inside the
//! sandbox (the helper kennel mounts read-only) reaches `kennel notify watch` (printed mode,
//! the CLI's own loop over the daemon's socket) within a second, cleaned of escape sequences;
//! the notification directory is the only thing of the host's state the sandbox sees; a 403
//! from the environment's proxy names the `kennel allow` to run.
//! Mandatory under `CI=true`, skipped with a reason without an engine.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kennel_cli::client::Client;
use kennel_cli::commands::notify::{Output, WatchArgs, watch_with};
use kennel_cli::commands::up::{UpArgs, build_request};
use kennel_supervisord::api::types::EnvInfo;
use kennel_test_support::docker::{EnvGuard, engine, proxy_binary, share_dir, unique_env};

use crate::e2e_supervisor::{RunningDaemon, exec};

/// Lines the watcher prints, sent on as they are written.
struct Lines(std::sync::mpsc::Sender<String>, Vec<u8>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        while let Some(i) = self.1.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.1.drain(..=i).collect();
            let _ = self
                .0
                .send(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A busybox image with what the POSIX helper uses (`sh`, `printf`, `wc`, `date`, `mv`) and
/// no `/usr/local/bin`: the engine makes the helper's mount point in the read-only rootfs.
async fn notify_image(d: &kennel_container::DockerBackend) -> String {
    let img = kennel_container::image::busybox_rootfs(
        "kennel-test-notify",
        &[
            "sh", "sleep", "mv", "date", "wc", "cat", "ls", "stat", "id", "test",
        ],
        &[],
    )
    .expect("busybox-static on the host")
    .cmd(&["/bin/busybox", "sleep", "3600"]);
    kennel_container::image::ensure_image(d, "kennel-test-notify", &img)
        .await
        .expect("load notify test image")
}

fn recv_within(rx: &std::sync::mpsc::Receiver<String>, within: Duration) -> Option<String> {
    rx.recv_timeout(within).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_from_the_sandbox_reaches_notify_watch_within_a_second() {
    let test = "notification_from_the_sandbox_reaches_notify_watch_within_a_second";
    let Some(d) = engine(test).await else { return };
    let Some(proxy_bin) = proxy_binary(test) else {
        return;
    };
    let image = notify_image(&d).await;
    let name = unique_env("notify");
    let _guard = EnvGuard::new(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kennel.sock");
    let state = dir.path().join("state");
    let daemon = RunningDaemon::start(&d, &proxy_bin, &socket, &state);
    let client = Client::new(&socket);

    let ws = tempfile::tempdir().expect("workspace");
    share_dir(ws.path(), 1001, 2000, 0o770);
    std::fs::write(
        ws.path().join("kennel.toml"),
        format!("name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n"),
    )
    .expect("kennel.toml");
    let req = build_request(&UpArgs {
        spec: None,
        learn: None,
        name: None,
        image: None,
        workspace: Some(ws.path().into()),
        ..Default::default()
    })
    .expect("spec");
    let info: EnvInfo = client.post("/envs", &req).await.expect("create");
    assert_eq!(info.state, "running", "{info:?}");

    // The mount point in the workspace belongs to the workspace's owner, not to root.
    let mp = std::fs::metadata(ws.path().join(".notifications")).expect("mount point");
    use std::os::unix::fs::MetadataExt;
    assert_eq!((mp.uid(), mp.gid()), (1001, 2000));

    // The helper is on PATH, read-only; the directory is writable, and only it is mounted.
    let (out, err, code) = exec(
        &client,
        &name,
        "command -v kennel-notify; echo $KENNEL_NOTIFY_DIR; touch /usr/local/bin/kennel-notify 2>/dev/null && echo helper-writable; touch /workspace/.notifications/.probe && echo dir-writable",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..3],
        [
            "/usr/local/bin/kennel-notify",
            "/workspace/.notifications",
            "dir-writable"
        ],
        "{out}{err}"
    );

    // The watcher: the CLI's loop in printed mode, in a thread of its own.
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, stop, env) = (client.clone(), stop.clone(), name.clone());
        std::thread::spawn(move || {
            let mut out = Output::Writer(Box::new(Lines(tx, Vec::new())));
            let args = WatchArgs {
                env: Some(env),
                print: true,
                poll_secs: 1,
            };
            watch_with(&client, &args, &mut out, &stop).map(|_| ())
        })
    };
    // Its first call (which only learns where "now" is) is local and quick.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (out, err, code) = exec(&client, &name, "kennel-notify complete 'tests pass: 42/42'").await;
    assert_eq!(code, 0, "{out}{err}");
    let written = Instant::now();
    let line = tokio::task::block_in_place(|| recv_within(&rx, Duration::from_secs(5)))
        .expect("the notification reaches the watcher");
    let took = written.elapsed();
    eprintln!("notification latency (exec returned -> watcher line): {took:?}");
    assert!(
        line.ends_with(&format!("[{name}] complete: tests pass: 42/42")),
        "{line}"
    );
    assert!(took <= Duration::from_secs(1), "took {took:?}");

    // Escape sequences written by the sandbox never reach the terminal.
    let (out, err, code) = exec(
        &client,
        &name,
        r#"kennel-notify error "$(printf '\033]0;owned\007\033[31mbuild failed\033[0m\033[2J')""#,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let line = tokio::task::block_in_place(|| recv_within(&rx, Duration::from_secs(5)))
        .expect("the second notification");
    assert!(
        line.ends_with(&format!("[{name}] error: build failed")),
        "{line:?}"
    );
    assert!(!line.contains('\u{1b}'), "{line:?}");

    // Bad use of the helper is refused in the sandbox with a usage line.
    let (_, err, code) = exec(&client, &name, "kennel-notify urgent hi").await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("usage: kennel-notify"), "{err}");

    // A denied request's 403 says which `kennel allow` a person runs (the request goes to the
    // environment's own proxy only, which denies it by policy before any lookup).
    let (out, err, _) = exec(
        &client,
        &name,
        "printf 'GET http://denied.kennel-test/ HTTP/1.1\r\nHost: denied.kennel-test\r\nConnection: close\r\n\r\n' | nc proxy 8888",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}{err}");
    assert!(
        out.contains(&format!(
            "Ask a person on the host to run: kennel allow {name} denied.kennel-test:80"
        )),
        "{out}"
    );

    stop.store(true, Ordering::SeqCst);
    let _: kennel_supervisord::api::types::Removed =
        client.delete(&format!("/envs/{name}")).await.expect("down");
    tokio::task::block_in_place(|| watcher.join())
        .expect("watcher thread")
        .expect("watch ends cleanly");
    daemon.stop().await;
}
