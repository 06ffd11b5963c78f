//! Shutdown drains: once shutdown starts, new connections are refused, but a running exec
//! stream finishes and delivers its exit code before the daemon returns.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kennel_container::backend::{
    Backend, BoxFuture, EnvPlan, EnvStatus, ExecOutput, ExecRequest, ExecSession, ExitHandle,
};
use kennel_container::error::BackendError;
use kennel_container::fake::FakeBackend;
use kennel_supervisord::auth::Authorizer;
use kennel_supervisord::frame::{self, FrameKind};
use kennel_supervisord::registry::{Daemon, FixedProxyImage};
use kennel_supervisord::state::StateDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// FakeBackend whose exec (or create) blocks until the test releases it.
struct SlowExec {
    fake: FakeBackend,
    release: Mutex<Option<oneshot::Receiver<()>>>,
    started: Mutex<Option<oneshot::Sender<()>>>,
    slow_create: bool,
}

impl Backend for SlowExec {
    fn create_env<'a>(
        &'a self,
        plan: &'a EnvPlan,
    ) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        if !self.slow_create {
            return self.fake.create_env(plan);
        }
        let release = self.release.lock().unwrap().take().unwrap();
        if let Some(started) = self.started.lock().unwrap().take() {
            let _ = started.send(());
        }
        Box::pin(async move {
            let _ = release.await;
            self.fake.create_env(plan).await
        })
    }
    fn list_envs(&self) -> BoxFuture<'_, Result<Vec<EnvStatus>, BackendError>> {
        self.fake.list_envs()
    }
    fn inspect_env<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<EnvStatus>, BackendError>> {
        self.fake.inspect_env(name)
    }
    fn remove_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        self.fake.remove_env(name)
    }
    fn exec<'a>(
        &'a self,
        _name: &'a str,
        _req: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>> {
        let release = self.release.lock().unwrap().take().unwrap();
        if let Some(started) = self.started.lock().unwrap().take() {
            let _ = started.send(());
        }
        Box::pin(async move {
            let output = futures_util::stream::once(async move {
                let _ = release.await;
                Ok(ExecOutput::Stdout(Bytes::from_static(b"finished\n")))
            });
            Ok(ExecSession {
                output: Box::pin(output),
                stdin: None,
                exit: ExitHandle::new(|| Box::pin(async { Ok(5) })),
                resize: None,
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_clients_and_lets_a_running_exec_finish() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kennel.sock");
    let workspace = tempfile::tempdir().unwrap();
    let (release_tx, release_rx) = oneshot::channel();
    let (started_tx, started_rx) = oneshot::channel();
    let backend = Arc::new(SlowExec {
        fake: FakeBackend::new(),
        release: Mutex::new(Some(release_rx)),
        started: Mutex::new(Some(started_tx)),
        slow_create: false,
    });
    let daemon = Daemon::new(
        backend,
        Arc::new(FixedProxyImage("kennel-proxy:test".into())),
        StateDir::open(&dir.path().join("state")).unwrap(),
        Authorizer::new(0, [], []),
    );
    let spec = kennel_container::spec::EnvSpec::from_workspace(
        workspace.path(),
        &kennel_container::spec::SpecOverrides {
            name: Some("slow".into()),
            workspace: Some(workspace.path().into()),
            ..Default::default()
        },
    )
    .unwrap();
    let peer = kennel_supervisord::auth::Peer {
        pid: None,
        uid: 0,
        gid: 0,
        groups: vec![],
    };
    daemon
        .create(
            &peer,
            kennel_supervisord::api::types::CreateEnv {
                spec: (&spec).into(),
                project_whitelist: None,
            },
        )
        .await
        .unwrap();

    let listener = kennel_supervisord::daemon::bind_socket(&socket, None).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let served = tokio::spawn(kennel_supervisord::daemon::run(listener, daemon, async {
        let _ = stop_rx.await;
    }));

    // Start an exec by hand (raw HTTP upgrade) and wait until the backend runs it.
    let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let body = br#"{"cmd":["slow"]}"#;
    let head = format!(
        "POST /v1/envs/slow/exec HTTP/1.1\r\nHost: kennel\r\nConnection: Upgrade\r\nUpgrade: kennel-exec/1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    started_rx.await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.unwrap();
        response.push(byte[0]);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&response)
    );

    // Shut down while the exec runs: new clients are refused …
    stop_tx.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(&socket).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections still accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !served.is_finished(),
        "the daemon must wait for the running exec"
    );

    // … and the running exec still delivers its output and exit code.
    release_tx.send(()).unwrap();
    let out = frame::read_frame(&mut conn).await.unwrap().unwrap();
    assert_eq!(
        (out.kind, &out.payload[..]),
        (FrameKind::Stdout, &b"finished\n"[..])
    );
    let exit = frame::read_frame(&mut conn).await.unwrap().unwrap();
    assert_eq!(exit.exit_code().unwrap(), 5);
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("daemon drained")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_finishes_even_when_the_client_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kennel.sock");
    let workspace = tempfile::tempdir().unwrap();
    let (release_tx, release_rx) = oneshot::channel();
    let (started_tx, started_rx) = oneshot::channel();
    let fake = FakeBackend::new();
    let backend = Arc::new(SlowExec {
        fake: fake.clone(),
        release: Mutex::new(Some(release_rx)),
        started: Mutex::new(Some(started_tx)),
        slow_create: true,
    });
    let daemon = Daemon::new(
        backend,
        Arc::new(FixedProxyImage("kennel-proxy:test".into())),
        StateDir::open(&dir.path().join("state")).unwrap(),
        Authorizer::new(0, [], []),
    );
    let listener = kennel_supervisord::daemon::bind_socket(&socket, None).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let served = tokio::spawn(kennel_supervisord::daemon::run(
        listener,
        daemon.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let spec = kennel_container::spec::EnvSpec::from_workspace(
        workspace.path(),
        &kennel_container::spec::SpecOverrides {
            name: Some("steady".into()),
            workspace: Some(workspace.path().into()),
            ..Default::default()
        },
    )
    .unwrap();
    let body = serde_json::to_vec(&kennel_supervisord::api::types::CreateEnv {
        spec: (&spec).into(),
        project_whitelist: None,
    })
    .unwrap();
    let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let head = format!(
        "POST /v1/envs HTTP/1.1\r\nHost: kennel\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    started_rx.await.unwrap();
    drop(conn); // the client gives up while the engine is still creating
    release_tx.send(()).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = fake.inspect_env("steady").await.unwrap().is_some()
            && dir.path().join("state/envs/steady/spec.json").is_file();
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the create was abandoned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(daemon.inspect("steady").await.unwrap().state, "running");
    stop_tx.send(()).unwrap();
    served.await.unwrap();
}
