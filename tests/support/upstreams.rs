//! Real upstream proxies for the upstream-chaining tests, started on free loopback ports with
//! configs generated into a temporary directory: microsocks (SOCKS5, optional
//! username/password), dante (`danted`, SOCKS5), tinyproxy and squid (HTTP, squid with basic
//! auth via `basic_ncsa_auth`), an OpenSSH `ssh -D` dynamic forward to an `sshd` the fixture
//! runs with keys it generates, and a TLS front that turns any HTTP proxy into an `https://`
//! upstream. Plus the origins they lead to (plain HTTP and TLS with a test CA).
//!
//! Every process runs in its own process group and is killed (group-wide) on drop.
//!
//! **Hermetic name resolution.** When the fixture can create a mount namespace (root), each
//! upstream runs under `unshare -m` with a private `/etc/hosts` (`localhost` and
//! [`UPSTREAM_ONLY_NAME`] → 127.0.0.1) and a private `/etc/resolv.conf` pointing at
//! `127.0.0.1`, so a name the upstream resolves never produces a DNS query off the machine.
//! [`hermetic_dns`] says whether that is available; tests that make an upstream resolve names
//! other than `localhost` must skip (with a printed reason) when it is not.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A name only the upstreams' private hosts file knows (→ 127.0.0.1); kennel's resolver must
/// not know it. Requires [`hermetic_dns`].
pub const UPSTREAM_ONLY_NAME: &str = "far.kennel.test";

/// Names the test CA's server certificate is valid for.
pub const ORIGIN_CERT_NAMES: &[&str] = &[
    "origin.kennel.test",
    "near.kennel.test",
    "localhost",
    UPSTREAM_ONLY_NAME,
    "127.0.0.1",
];

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(25);

/// A free TCP port on 127.0.0.1 (bound and released; nothing listens on it afterwards).
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Whether upstreams can run with a private hosts file and resolver (see the module docs).
pub fn hermetic_dns() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("unshare")
            .args(["-m", "--", "sh", "-c", "mount --bind /etc/hosts /etc/hosts"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Whether the tests run as root (sshd privilege separation, daemon user switching).
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Which upstream program a fixture runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `microsocks` (SOCKS5).
    Microsocks,
    /// `danted` (SOCKS5).
    Dante,
    /// `tinyproxy` (HTTP).
    Tinyproxy,
    /// `squid` with basic auth (HTTP).
    Squid,
    /// `ssh -D` to a local `sshd` (SOCKS5).
    SshDynamic,
}

/// A running upstream proxy. Killed on drop.
pub struct UpstreamProxy {
    kind: Kind,
    addr: SocketAddr,
    procs: Vec<Child>,
    log: PathBuf,
    /// Lines of `log` containing this are counted by [`UpstreamProxy::connections`].
    pattern: &'static str,
    credentials: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for UpstreamProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamProxy")
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .finish()
    }
}

impl UpstreamProxy {
    /// microsocks on a free port; with `Some((user, pass))` it requires username/password.
    pub async fn microsocks(auth: Option<(&str, &str)>) -> UpstreamProxy {
        let dir = tempdir();
        let port = free_port();
        let log = dir.path().join("microsocks.log");
        let mut args = vec![
            "-i".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        if let Some((u, p)) = auth {
            args.extend(["-u".into(), u.into(), "-P".into(), p.into()]);
        }
        let child = spawn(dir.path(), "microsocks", &args, &log);
        let mut up = UpstreamProxy {
            kind: Kind::Microsocks,
            addr: loopback(port),
            procs: vec![child],
            log,
            pattern: "connected to",
            credentials: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            dir,
        };
        up.wait_listening().await;
        up
    }

    /// danted (no authentication) on a free port; its log has one `tcp/accept [` line per
    /// client connection.
    pub async fn dante() -> UpstreamProxy {
        let dir = tempdir();
        let port = free_port();
        let log = dir.path().join("danted.log");
        let users = if is_root() {
            "user.privileged: root\nuser.unprivileged: nobody\n"
        } else {
            ""
        };
        let conf = format!(
            "logoutput: {log}\n\
             internal: 127.0.0.1 port = {port}\n\
             external: 127.0.0.1\n\
             clientmethod: none\n\
             socksmethod: none\n\
             {users}\
             client pass {{\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  log: connect error\n}}\n\
             socks pass {{\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  command: connect\n  log: connect error\n}}\n",
            log = log.display()
        );
        let conf_path = write(dir.path(), "danted.conf", &conf);
        let pid = dir.path().join("danted.pid");
        let args = vec![
            "-f".to_string(),
            conf_path.display().to_string(),
            "-p".into(),
            pid.display().to_string(),
            "-N".into(),
            "1".into(),
        ];
        let child = spawn(dir.path(), "danted", &args, &dir.path().join("danted.out"));
        let mut up = UpstreamProxy {
            kind: Kind::Dante,
            addr: loopback(port),
            procs: vec![child],
            log,
            pattern: "tcp/accept [",
            credentials: None,
            dir,
        };
        up.wait_listening().await;
        // The readiness probe is itself a logged client connection: wait for its line so
        // later counts are stable.
        up.wait_connections(1).await;
        up
    }

    /// tinyproxy on a free port; with `Some((user, pass))` it requires basic auth. Its log has
    /// one `Connect (file descriptor` line per client connection.
    pub async fn tinyproxy(auth: Option<(&str, &str)>) -> UpstreamProxy {
        let dir = tempdir();
        world_writable(dir.path());
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{log}\"\nLogLevel Connect\n\
             PidFile \"{pid}\"\nMaxClients 200\nAllow 127.0.0.1\n",
            log = log.display(),
            pid = dir.path().join("tinyproxy.pid").display()
        );
        if let Some((u, p)) = auth {
            conf.push_str(&format!("BasicAuth {u} {p}\n"));
        }
        let conf_path = write(dir.path(), "tinyproxy.conf", &conf);
        let args = vec![
            "-d".to_string(),
            "-c".into(),
            conf_path.display().to_string(),
        ];
        let child = spawn(
            dir.path(),
            "tinyproxy",
            &args,
            &dir.path().join("tinyproxy.out"),
        );
        let mut up = UpstreamProxy {
            kind: Kind::Tinyproxy,
            addr: loopback(port),
            procs: vec![child],
            log,
            pattern: "Connect (file descriptor",
            credentials: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            dir,
        };
        up.wait_listening().await;
        up.wait_connections(1).await;
        up
    }

    /// squid on a free port requiring basic auth (`user`/`pass`, checked by
    /// `basic_ncsa_auth` against an htpasswd file made with `openssl passwd -apr1`). Its
    /// `access.log` has one line per finished transaction (a tunnel is logged when it closes).
    pub async fn squid(user: &str, pass: &str) -> UpstreamProxy {
        let dir = tempdir();
        // squid drops privileges to its own user when started as root.
        world_writable(dir.path());
        let port = free_port();
        let d = dir.path().display().to_string();
        let hash = Command::new("openssl")
            .args(["passwd", "-apr1", pass])
            .output()
            .expect("run openssl passwd");
        assert!(hash.status.success(), "openssl passwd failed: {hash:?}");
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
        write(dir.path(), "htpasswd", &format!("{user}:{hash}\n"));
        write(dir.path(), "hosts", &hosts_file());
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             access_log stdio:{d}/access.log\n\
             cache deny all\n\
             coredump_dir {d}\n\
             hosts_file {d}/hosts\n\
             dns_nameservers 127.0.0.1\n\
             dns_timeout 2 seconds\n\
             auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/htpasswd\n\
             auth_param basic realm kennel-test\n\
             acl authed proxy_auth REQUIRED\n\
             http_access allow authed\n\
             http_access deny all\n\
             shutdown_lifetime 0 seconds\n\
             visible_hostname kennel-test-squid\n"
        );
        let conf_path = write(dir.path(), "squid.conf", &conf);
        let args = vec![
            "-N".to_string(),
            "-f".into(),
            conf_path.display().to_string(),
        ];
        let child = spawn(dir.path(), "squid", &args, &dir.path().join("squid.out"));
        let mut up = UpstreamProxy {
            kind: Kind::Squid,
            addr: loopback(port),
            procs: vec![child],
            log: dir.path().join("access.log"),
            pattern: " 127.0.0.1 ",
            credentials: Some((user.to_string(), pass.to_string())),
            dir,
        };
        up.wait_listening().await;
        up
    }

    /// An OpenSSH `sshd` on a free loopback port (host key and user key generated into the
    /// fixture's directory) and `ssh -N -D 127.0.0.1:PORT` to it: the seeds' real use case.
    /// The SOCKS5 front is the ssh client; `sshd` connects to the targets. The ssh client's
    /// verbose log has one `forwarding to socks port` line per SOCKS connection.
    pub async fn ssh_dynamic() -> UpstreamProxy {
        let dir = tempdir();
        let d = dir.path();
        for key in ["host_key", "id"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .output()
                .expect("run ssh-keygen");
            assert!(out.status.success(), "ssh-keygen failed: {out:?}");
        }
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).expect("authorized_keys");
        if is_root() {
            // sshd's privilege-separation directory (the Debian service creates it at start).
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let ssh_port = free_port();
        let conf = format!(
            "Port {ssh_port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             AllowTcpForwarding yes\nLogLevel VERBOSE\n",
            d = d.display()
        );
        let conf_path = write(d, "sshd_config", &conf);
        let sshd = spawn(
            d,
            "/usr/sbin/sshd",
            &[
                "-D".to_string(),
                "-e".into(),
                "-f".into(),
                conf_path.display().to_string(),
            ],
            &d.join("sshd.log"),
        );
        let mut up = UpstreamProxy {
            kind: Kind::SshDynamic,
            addr: loopback(ssh_port),
            procs: vec![sshd],
            log: d.join("ssh.log"),
            pattern: "forwarding to socks port",
            credentials: None,
            dir,
        };
        up.wait_listening().await;
        let socks_port = free_port();
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into());
        let d = up.dir.path().to_path_buf();
        let args = vec![
            "-N".to_string(),
            "-v".into(),
            "-D".into(),
            format!("127.0.0.1:{socks_port}"),
            "-i".into(),
            d.join("id").display().to_string(),
            "-p".into(),
            ssh_port.to_string(),
            "-F".into(),
            "/dev/null".into(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            format!("{user}@127.0.0.1"),
        ];
        // The client resolves nothing (127.0.0.1); only sshd needs the hermetic resolver.
        let ssh = spawn_plain(&d, "ssh", &args, &up.log);
        up.procs.insert(0, ssh);
        up.addr = loopback(socks_port);
        up.wait_listening().await;
        up
    }

    /// Which program this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The upstream's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://127.0.0.1:PORT` (no credentials).
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// `scheme://user:pass@127.0.0.1:PORT` with the fixture's credentials (panics without).
    pub fn url_with_credentials(&self, scheme: &str) -> String {
        let (u, p) = self
            .credentials
            .as_ref()
            .expect("this upstream fixture has no credentials");
        format!("{scheme}://{u}:{p}@{}", self.addr)
    }

    /// The fixture's credentials.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The upstream's own log (empty if not written yet).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Everything the fixture's processes wrote (for failure messages).
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for p in paths {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                if name.ends_with(".log") || name.ends_with(".out") {
                    out.push_str(&format!(
                        "--- {name}\n{}\n",
                        std::fs::read_to_string(&p).unwrap_or_default()
                    ));
                }
            }
        }
        out
    }

    /// Connections (or, for squid, finished transactions) the upstream has logged.
    pub fn connections(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(self.pattern))
            .count()
    }

    /// Polls (deadline 10 s) until [`UpstreamProxy::connections`] is at least `n`; returns it.
    pub async fn wait_connections(&self, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.connections();
            if c >= n {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: expected at least {n} logged connections, saw {c}\n{}",
                self.kind,
                self.all_logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until `needle` appears in the upstream's log (deadline 10 s).
    pub async fn wait_log_contains(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{:?}: log never contained {needle:?}\n{}",
                self.kind,
                self.all_logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the upstream now (its port then refuses connections).
    pub fn stop(&mut self) {
        for mut c in self.procs.drain(..) {
            kill_group(&mut c);
        }
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            let exited = self
                .procs
                .iter_mut()
                .find_map(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "{:?} exited before listening on {} ({status})\n{}",
                    self.kind,
                    self.addr,
                    self.all_logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not listen on {} within {READY_TIMEOUT:?}\n{}",
                self.kind,
                self.addr,
                self.all_logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for UpstreamProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn kill_group(c: &mut Child) {
    if let Ok(None) = c.try_wait() {
        let pgid = Pid::from_raw(c.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(c.try_wait(), Ok(None)) {
                // Helpers of the group (squid's auth helper, dante's children) get a KILL too.
                let _ = killpg(pgid, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = c.wait();
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kennel-upstream-")
        .tempdir()
        .expect("create temp dir")
}

fn world_writable(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).expect("chmod temp dir");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create config file");
    f.write_all(text.as_bytes()).expect("write config file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod config");
    p
}

fn hosts_file() -> String {
    format!("127.0.0.1 localhost\n127.0.0.1 {UPSTREAM_ONLY_NAME}\n")
}

/// Starts `program` in its own process group, stdout+stderr appended to `log`, under the
/// hermetic resolver when available.
fn spawn(dir: &Path, program: &str, args: &[String], log: &Path) -> Child {
    if !hermetic_dns() {
        return spawn_plain(dir, program, args, log);
    }
    let hosts = write(dir, "hermetic-hosts", &hosts_file());
    let resolv = write(
        dir,
        "hermetic-resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    let mut full = vec![
        "-m".to_string(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        r#"mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#.into(),
        hosts.display().to_string(),
        resolv.display().to_string(),
        program.to_string(),
    ];
    full.extend(args.iter().cloned());
    spawn_plain(dir, "unshare", &full, log)
}

fn spawn_plain(dir: &Path, program: &str, args: &[String], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open fixture log");
    let err = out.try_clone().expect("clone log handle");
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (installed by scripts/setup?): {e}"))
}

// ---------------------------------------------------------------------------------------------
// Origins and TLS

/// A test certificate authority and a server certificate for [`ORIGIN_CERT_NAMES`].
pub struct TestCa {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    /// Mints a CA and a server certificate signed by it.
    pub fn new() -> TestCa {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kennel upstream test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params = rcgen::CertificateParams::new(
            ORIGIN_CERT_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("sign leaf");
        let dir = tempdir();
        write(dir.path(), "ca.pem", &ca_cert.pem());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        );
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key_der)
            .expect("server cert");
        TestCa {
            dir,
            server: Arc::new(server),
            ca_der: ca_cert.der().clone(),
        }
    }

    /// Path of the CA certificate (PEM), for `curl --cacert` and the dialer's `ca_file`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Client configuration trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add test CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// Server configuration presenting the certificate for [`ORIGIN_CERT_NAMES`].
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A loopback HTTP/1.1 origin (optionally behind TLS). `GET /bytes/N` answers N bytes;
/// anything else answers `hello from kennel origin <path>`. Stops on drop.
pub struct Origin {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Origin {
    /// Plain HTTP origin on 127.0.0.1.
    pub async fn http() -> Origin {
        Origin::start(None).await
    }

    /// HTTPS origin on 127.0.0.1 with `ca`'s server certificate.
    pub async fn tls(ca: &TestCa) -> Origin {
        Origin::start(Some(tokio_rustls::TlsAcceptor::from(ca.server_config()))).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let h = h.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(tcp).await {
                                serve_http(s, h).await;
                            }
                        }
                        None => serve_http(tcp, h).await,
                    }
                });
            }
        });
        Origin { addr, hits, task }
    }

    /// The origin's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The origin's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body the origin answers for `path` (other than `/bytes/N`).
pub fn origin_body(path: &str) -> String {
    format!("hello from kennel origin {path}")
}

async fn serve_http<S>(mut s: S, hits: Arc<AtomicUsize>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request head (requests here have no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        hits.fetch_add(1, Ordering::SeqCst);
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        // Absolute-form (a proxy forwarded it unchanged) → take the path.
        let path = match target.find("://") {
            Some(i) => {
                let rest = &target[i + 3..];
                rest.find('/')
                    .map(|j| rest[j..].to_string())
                    .unwrap_or_else(|| "/".into())
            }
            None => target,
        };
        let close = head.to_ascii_lowercase().contains("connection: close");
        if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            let hdr = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            if s.write_all(hdr.as_bytes()).await.is_err() {
                return;
            }
            let block = vec![b'k'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                if s.write_all(&block[..k]).await.is_err() {
                    return;
                }
                left -= k as u64;
            }
        } else {
            let body = origin_body(&path);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nX-Origin-Request-Target: {}\r\n\r\n{body}",
                body.len(),
                head.split_whitespace().nth(1).unwrap_or("")
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = s.flush().await;
        if close {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// A TLS terminator in front of a plain upstream proxy: makes it an `https://` upstream with
/// `ca`'s certificate (valid for `localhost` and `127.0.0.1`). Stops on drop.
pub struct TlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Listens on 127.0.0.1 and relays each TLS connection to `backend`.
    pub async fn start(backend: SocketAddr, ca: &TestCa) -> TlsFront {
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS front");
        let addr = listener.local_addr().expect("TLS front addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut back) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
                });
            }
        });
        TlsFront { addr, task }
    }

    /// The TLS listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
