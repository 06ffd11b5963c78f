//! The in-process daemon the CLI's integration tests run the real `kennel` binary against: a
//! kennel-supervisord on a temporary socket, backed by the in-memory FakeBackend (no Docker).
//! Shared by every test file of this directory (`mod support;`).

#![allow(dead_code)] // each test file uses part of it
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;

use kennel_container::fake::FakeBackend;
use kennel_supervisord::auth::Authorizer;
use kennel_supervisord::registry::{Daemon, FixedProxyImage};
use kennel_supervisord::state::StateDir;

/// A daemon running on its own runtime; stopped (and drained) on drop.
pub struct TestDaemon {
    /// The runtime the daemon runs on.
    pub rt: tokio::runtime::Runtime,
    /// A 0755 temp dir holding the socket and the state directory (`state/`).
    pub dir: tempfile::TempDir,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The engine the daemon talks to (its recorded plans, exec answers …).
    pub fake: FakeBackend,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestDaemon {
    /// A daemon whose callers are checked by `authorizer`.
    pub fn start_with(authorizer: Authorizer) -> TestDaemon {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("kennel.sock");
        let fake = FakeBackend::new();
        let daemon = Daemon::new(
            Arc::new(fake.clone()),
            Arc::new(FixedProxyImage("kennel-proxy:test".into())),
            StateDir::open(&dir.path().join("state")).unwrap(),
            authorizer,
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = rt
            .block_on(async { kennel_supervisord::daemon::bind_socket(&socket, None) })
            .unwrap();
        let done = rt.spawn(kennel_supervisord::daemon::run(listener, daemon, async {
            let _ = stopped.await;
        }));
        TestDaemon {
            rt,
            dir,
            socket,
            fake,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// A daemon that lets only root (the test) in.
    pub fn start() -> TestDaemon {
        TestDaemon::start_with(Authorizer::new(0, [], []))
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = self.rt.block_on(done);
        }
    }
}

/// A finished command's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
