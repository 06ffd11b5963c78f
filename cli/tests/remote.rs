//! `kennel --host ssh://user@host …` against a real `sshd` the test starts on a loopback port
//! (throwaway host and user keys), which runs `kennel system dial-stdio` to reach an in-process
//! kennel-supervisord (FakeBackend) on a temporary socket. The local `--socket` points nowhere,
//! so every answer has come through ssh.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should just fail the test

mod support;
use support::{TestDaemon, stderr, stdout};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kennel_container::backend::ExecResult;

const SSHD: &str = "/usr/sbin/sshd";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// sshd and ssh present? Without them: skip (and say why), or fail under CI=true.
fn have_openssh(test: &str) -> bool {
    let ssh = Command::new("ssh").arg("-V").output().is_ok();
    let ok = ssh && Path::new(SSHD).exists();
    if !ok {
        assert!(
            !ci(),
            "{test}: CI=true requires openssh-server and openssh-client (scripts/setup installs them)"
        );
        eprintln!("SKIPPED {test}: openssh-server/openssh-client not installed (scripts/setup)");
    }
    ok
}

/// An sshd on 127.0.0.1:<free port> that lets the current user in with a fresh key; killed on drop.
struct TestSshd {
    child: Child,
    port: u16,
    user: String,
    dir: tempfile::TempDir,
}

impl TestSshd {
    fn start() -> TestSshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "user_key"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "kennel-test", "-f"])
                .arg(d.join(key))
                .output()
                .unwrap();
            assert!(out.status.success(), "ssh-keygen: {out:?}");
        }
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .expect("the current uid has a passwd entry")
            .name;
        // sshd running as root insists on its privilege-separation directory.
        if nix::unistd::geteuid().is_root() && !Path::new("/run/sshd").exists() {
            std::fs::create_dir_all("/run/sshd").unwrap();
            std::fs::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {hk}\n\
                 AuthorizedKeysFile {ak}\n\
                 AuthenticationMethods publickey\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PidFile none\n\
                 LogLevel ERROR\n",
                hk = d.join("host_key").display(),
                ak = d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        let mut fields = host_pub.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {kind} {key}\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host 127.0.0.1\n  IdentityFile {id}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  \
                 StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n",
                id = d.join("user_key").display(),
                kh = d.join("known_hosts").display(),
            ),
        )
        .unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let sshd = TestSshd {
            child,
            port,
            user,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    /// `KENNEL_SSH_COMMAND`: ssh with the test's config (key, known host, no prompts).
    fn ssh_command(&self) -> String {
        format!("ssh -F {}", self.dir.path().join("ssh_config").display())
    }

    fn url(&self, socket: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            socket.display()
        )
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kennel ARGS…` with the daemon only reachable through `host`: the local socket is a path
/// where nothing listens.
fn kennel_via(sshd: &TestSshd, host: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kennel"))
        .args(["--socket", "/nonexistent/kennel-test.sock"])
        .args(args)
        .env("KENNEL_HOST", host)
        .env("KENNEL_SSH_COMMAND", sshd.ssh_command())
        .env("KENNEL_REMOTE_BIN", env!("CARGO_BIN_EXE_kennel"))
        .env_remove("KENNEL_SOCKET")
        .output()
        .unwrap()
}

#[test]
fn every_command_works_through_an_ssh_host() {
    if !have_openssh("every_command_works_through_an_ssh_host") {
        return;
    }
    let daemon = TestDaemon::start();
    let sshd = TestSshd::start();
    let host = sshd.url(&daemon.socket);

    let version = kennel_via(&sshd, &host, &["ls"]);
    assert!(version.status.success(), "ls: {}", stderr(&version));
    assert_eq!(
        stdout(&version).lines().count(),
        1,
        "only the header: {}",
        stdout(&version)
    );

    // Same machine, so the workspace path is valid on "both" sides.
    let ws = tempfile::tempdir().unwrap();
    std::fs::create_dir(ws.path().join(".devcontainer")).unwrap();
    std::fs::write(
        ws.path().join(".devcontainer/whitelist.txt"),
        "example.org\n",
    )
    .unwrap();
    let up = kennel_via(
        &sshd,
        &host,
        &[
            "up",
            "--workspace",
            ws.path().to_str().unwrap(),
            "--name",
            "far",
        ],
    );
    assert!(up.status.success(), "up: {}", stderr(&up));
    assert!(
        stdout(&up).contains("environment \"far\" is running"),
        "{}",
        stdout(&up)
    );

    let ls = kennel_via(&sshd, &host, &["ls"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let row = stdout(&ls).lines().nth(1).unwrap_or_default().to_string();
    assert!(
        row.starts_with("far") && row.contains("running"),
        "{}",
        stdout(&ls)
    );

    // The exec stream (an HTTP upgrade) over the ssh channel: output kept apart, exit code kept.
    daemon.fake.script_exec(
        &["sh", "-c", "work"],
        ExecResult {
            stdout: b"out line\n".to_vec(),
            stderr: b"err line\n".to_vec(),
            exit_code: 7,
        },
    );
    let exec = kennel_via(&sshd, &host, &["exec", "far", "--", "sh", "-c", "work"]);
    assert_eq!(stdout(&exec), "out line\n");
    assert_eq!(stderr(&exec), "err line\n");
    assert_eq!(exec.status.code(), Some(7));

    // The logs stream, too.
    daemon
        .fake
        .set_logs("kennel-far-sandbox", "first line\nsecond line\n");
    let logs = kennel_via(&sshd, &host, &["logs", "far"]);
    assert!(logs.status.success(), "logs: {}", stderr(&logs));
    assert_eq!(stdout(&logs), "first line\nsecond line\n");

    // `--host` wins over KENNEL_HOST, and a daemon error keeps its message and hint.
    let gone = Command::new(env!("CARGO_BIN_EXE_kennel"))
        .args(["--socket", "/nonexistent/kennel-test.sock", "--host", &host])
        .args(["inspect", "nope"])
        .env("KENNEL_HOST", "ssh://127.0.0.1:1")
        .env("KENNEL_SSH_COMMAND", sshd.ssh_command())
        .env("KENNEL_REMOTE_BIN", env!("CARGO_BIN_EXE_kennel"))
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        stderr(&gone).contains("environment \"nope\" not found"),
        "{}",
        stderr(&gone)
    );

    let down = kennel_via(&sshd, &host, &["down", "far"]);
    assert!(down.status.success(), "{}", stderr(&down));
    let ls = kennel_via(&sshd, &host, &["ls"]);
    assert!(!stdout(&ls).contains("far"), "{}", stdout(&ls));
}

#[test]
fn remote_failures_say_what_the_other_side_said() {
    if !have_openssh("remote_failures_say_what_the_other_side_said") {
        return;
    }
    let sshd = TestSshd::start();

    // No daemon behind the remote socket: the remote kennel's own message comes back.
    let missing = sshd.dir.path().join("no-daemon.sock");
    let out = kennel_via(&sshd, &sshd.url(&missing), &["ls"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "through ssh://{}@127.0.0.1:{}",
            sshd.user, sshd.port
        )),
        "{err}"
    );
    assert!(err.contains("kennel-supervisord is not running"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    // ssh itself fails (the key is not accepted): ssh's message, not a bare "connection closed".
    std::fs::write(sshd.dir.path().join("authorized_keys"), "").unwrap();
    let out = kennel_via(&sshd, &sshd.url(&missing), &["ls"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        err.contains("cannot reach kennel-supervisord through ssh://"),
        "{err}"
    );

    // A malformed host is refused before anything runs.
    let out = kennel_via(&sshd, "ssh://-oProxyCommand=touch", &["ls"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid --host/KENNEL_HOST"),
        "{}",
        stderr(&out)
    );
}
