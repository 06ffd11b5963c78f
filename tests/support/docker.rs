//! Docker fixtures for the environment tests: the engine probe (skip with a reason, FAIL under
//! `CI=true`), a label-based cleanup guard, test images built from host files (busybox-static,
//! the std-only probe, curl and openssl with their libraries), origin containers on an
//! environment's egress network, and an exec helper for any container.
//!
//! Safety: everything created here carries `dev.kennel.env=<unique test env>` and
//! `dev.kennel.managed=true` and is removed by [`EnvGuard`] on drop, also when a test fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::{CreateContainerOptions, StartContainerOptions};
use futures_util::StreamExt;
use kennel_container::backend::{ExecResult, LABEL_ENV, LABEL_MANAGED, LABEL_ROLE};
use kennel_container::{Backend, DockerBackend};
use sha2::{Digest, Sha256};

/// Whether Docker-backed tests are mandatory (`CI=true`).
pub fn docker_mandatory() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Connects to the engine. Without one: `None` and a printed reason, or a panic under `CI=true`.
pub async fn engine(test: &str) -> Option<DockerBackend> {
    match DockerBackend::connect().await {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(
                !docker_mandatory(),
                "{test}: CI=true requires a Docker engine, but: {e}"
            );
            eprintln!("SKIPPED {test}: no Docker engine answers ({e})");
            None
        }
    }
}

/// The workspace root (parent of the tests crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The static kennel-proxy binary: `$KENNEL_PROXY_BIN`, else `target/static/…` (built by
/// `scripts/build-proxy-static`, which `scripts/test` runs). `None` (+ reason printed) when
/// missing and not in CI; panics when missing under `CI=true`.
pub fn proxy_binary(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("KENNEL_PROXY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(kennel_container::image::STATIC_PROXY_REL));
    let ok = p.is_file() && matches!(kennel_container::image::elf_interpreter(&p), Ok(None));
    if ok {
        return Some(p);
    }
    let why = format!(
        "no static kennel-proxy at {} (run scripts/build-proxy-static or set KENNEL_PROXY_BIN)",
        p.display()
    );
    assert!(!docker_mandatory(), "{test}: {why}");
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// A unique, valid environment name for one test (`<prefix>-<pid><counter><time>`).
pub fn unique_env(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tag = format!(
        "{:x}{:x}{:x}",
        std::process::id() & 0xffff,
        N.fetch_add(1, Ordering::Relaxed),
        nanos & 0xfff
    );
    let mut p: String = prefix.chars().take(40 - tag.len() - 2).collect();
    p.push('-');
    p.push_str(&tag);
    p
}

/// Removes every object labelled `dev.kennel.env=<name>` (and its home volume) when dropped (on a separate thread with
/// its own runtime, so it works inside and outside async tests, and on panic).
#[derive(Debug)]
pub struct EnvGuard {
    /// The environment name.
    pub name: String,
}

impl EnvGuard {
    /// Guards `name`.
    pub fn new(name: &str) -> Self {
        EnvGuard {
            name: name.to_string(),
        }
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        let name = self.name.clone();
        let t = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(d) = DockerBackend::connect().await {
                    // The home volume outlives remove_env by design; a test leaves nothing.
                    let res = match d.remove_env(&name).await {
                        Ok(()) => d.purge_env(&name).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = res {
                        eprintln!("EnvGuard: cleanup of {name} failed: {e}");
                    }
                }
            });
        });
        let _ = t.join();
    }
}

/// The probe binary for test images: `$KENNEL_PROBE_BIN` when set, else compiled once into
/// `target/test-helpers/` (see [`build_probe_into`]).
pub fn probe_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KENNEL_PROBE_BIN") {
        return PathBuf::from(p);
    }
    build_probe_into(&workspace_root().join("target/test-helpers"))
}

/// Compiles the probe (`tests/probe/probe.rs`) into a static binary in `dir`, named by the hash
/// of its source, and returns its path. Safe to call from many test processes and threads at
/// once: nextest runs every test in its own process, and two rustc runs sharing an output
/// directory share intermediate object names (the linker then reads a file another rustc is
/// rewriting). So the build holds an exclusive lock on `<name>.lock`, compiles in a private
/// directory of its own, and renames the finished binary into place; whoever waited on the lock
/// finds it there.
pub fn build_probe_into(dir: &Path) -> PathBuf {
    let src = workspace_root().join("tests/probe/probe.rs");
    let code = std::fs::read(&src).expect("read tests/probe/probe.rs");
    let hash = format!("{:x}", Sha256::digest(&code));
    let name = format!("kennel-probe-{}", &hash[..16]);
    let out = dir.join(&name);
    if out.is_file() {
        return out;
    }
    std::fs::create_dir_all(dir).expect("create the test-helpers dir");
    let lock = std::fs::File::create(dir.join(format!("{name}.lock"))).expect("create lock file");
    lock.lock().expect("lock the probe build");
    if out.is_file() {
        return out;
    }
    let private = tempfile::tempdir_in(dir).expect("private build dir");
    let tmp = private.path().join(&name);
    let status = Command::new("rustc")
        .args([
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
        ])
        .args(["--edition", "2021", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("run rustc for the probe");
    assert!(status.success(), "compiling {} failed", src.display());
    std::fs::rename(&tmp, &out).expect("install probe binary");
    out
}

fn which(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found on the host; run scripts/setup");
}

const BUSYBOX_APPLETS: [&str; 24] = [
    "sh", "cat", "id", "ls", "touch", "sleep", "httpd", "echo", "mkdir", "rm", "env", "ps", "grep",
    "head", "true", "false", "ulimit", "test", "wc", "stat", "mount", "tr", "du", "dd",
];

/// The test image: busybox-static (with applet links), the probe at `/usr/local/bin/probe`,
/// curl and openssl with their libraries, the host's CA bundle, users root / claude (1001) and
/// group dev (2000), a web root `/www`. Loaded once per content hash; returns its tag.
pub async fn test_image(d: &DockerBackend) -> String {
    let tools = [which("curl"), which("openssl")];
    let tools: Vec<&Path> = tools.iter().map(PathBuf::as_path).collect();
    let img = kennel_container::image::busybox_rootfs("kennel-test", &BUSYBOX_APPLETS, &tools)
        .expect("busybox-static, curl and openssl on the host (scripts/setup installs them)")
        .host_file("/usr/local/bin/probe", &probe_binary(), 0o755)
        .expect("probe binary")
        .file("/www/index.html", "hello from kennel origin\n", 0o644)
        .dir("/certs")
        .cmd(&["/bin/busybox", "sleep", "3600"]);
    kennel_container::image::ensure_image(d, "kennel-test", &img)
        .await
        .expect("load test image")
}

/// [`test_image`] plus the host's docker CLI (`/usr/bin/docker`, with its libraries): the
/// sandbox image of the Docker-engine tests. Returns its tag.
pub async fn docker_test_image(d: &DockerBackend) -> String {
    let tools = [which("curl"), which("docker")];
    let tools: Vec<&Path> = tools.iter().map(PathBuf::as_path).collect();
    let img =
        kennel_container::image::busybox_rootfs("kennel-test-docker", &BUSYBOX_APPLETS, &tools)
            .expect(
                "busybox-static, curl and the docker CLI on the host (scripts/setup installs them)",
            )
            .host_file("/usr/local/bin/probe", &probe_binary(), 0o755)
            .expect("probe binary")
            .file("/www/index.html", "hello from kennel origin\n", 0o644)
            .cmd(&["/bin/busybox", "sleep", "3600"]);
    kennel_container::image::ensure_image(d, "kennel-test-docker", &img)
        .await
        .expect("load docker test image")
}

/// [`test_image`]'s busybox and probe plus the host's `git` (with its `ldd` libraries), for the
/// git tests: real `git status` / `git commit` inside the sandbox. Returns its tag.
pub async fn git_test_image(d: &DockerBackend) -> String {
    let git = ["/usr/bin/git", "/usr/local/bin/git"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("git on the host (scripts/setup installs it)");
    let img = kennel_container::image::busybox_rootfs("kennel-test-git", &BUSYBOX_APPLETS, &[&git])
        .expect("busybox-static and git on the host")
        .host_file("/usr/local/bin/probe", &probe_binary(), 0o755)
        .expect("probe binary")
        .cmd(&["/bin/busybox", "sleep", "3600"]);
    kennel_container::image::ensure_image(d, "kennel-test-git", &img)
        .await
        .expect("load git test image")
}

/// Runs `argv` in any container (as `user`, default the container's) and collects the result.
pub async fn exec_in(
    d: &DockerBackend,
    container: &str,
    argv: &[&str],
    user: Option<&str>,
) -> ExecResult {
    let docker = d.docker();
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions::<String> {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(argv.iter().map(|s| s.to_string()).collect()),
                user: user.map(str::to_string),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create exec {argv:?} in {container}: {e}"));
    let mut res = ExecResult::default();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&exec.id, None::<StartExecOptions>)
        .await
        .unwrap_or_else(|e| panic!("start exec {argv:?} in {container}: {e}"))
    {
        while let Some(Ok(chunk)) = output.next().await {
            match chunk {
                LogOutput::StdErr { message } => res.stderr.extend_from_slice(&message),
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    res.stdout.extend_from_slice(&message)
                }
                LogOutput::StdIn { .. } => {}
            }
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let info = docker.inspect_exec(&exec.id).await.expect("inspect exec");
        if info.running != Some(true) {
            res.exit_code = info.exit_code.unwrap_or(-1);
            return res;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "exec {argv:?} did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A test container to start with [`start_origin`].
#[derive(Debug, Clone)]
pub struct OriginSpec<'a> {
    /// Environment label (cleanup).
    pub env: &'a str,
    /// Name suffix: the container is `kennel-<env>-<suffix>`.
    pub suffix: &'a str,
    /// Network to attach to.
    pub network: &'a str,
    /// DNS aliases on that network.
    pub aliases: &'a [&'a str],
    /// Image.
    pub image: &'a str,
    /// `sh -c` script (runs as root).
    pub script: &'a str,
    /// Bind mounts.
    pub binds: Vec<String>,
}

/// Starts a test container labelled for `env` (role `test-origin`). Returns its name.
pub async fn start_origin(d: &DockerBackend, o: &OriginSpec<'_>) -> String {
    let OriginSpec {
        env,
        suffix,
        network,
        aliases,
        image,
        script,
        ..
    } = *o;
    let binds = o.binds.clone();
    let name = format!("kennel-{env}-{suffix}");
    let labels = HashMap::from([
        (LABEL_ENV.to_string(), env.to_string()),
        (LABEL_ROLE.to_string(), "test-origin".to_string()),
        (LABEL_MANAGED.to_string(), "true".to_string()),
    ]);
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some("0:0".into()),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            binds: Some(binds),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: Some(aliases.iter().map(|s| s.to_string()).collect()),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    };
    d.docker()
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    d.docker()
        .start_container(&name, None::<StartContainerOptions>)
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    name
}

/// The first subnet and gateway of `network` (tests allow an origin's private address by its
/// subnet in `cidrs`: the address guard needs it).
pub async fn network_ipam(d: &DockerBackend, network: &str) -> (String, String) {
    let cfg = d
        .docker()
        .inspect_network(network, None)
        .await
        .unwrap_or_else(|e| panic!("inspect network {network}: {e}"))
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().next())
        .unwrap_or_else(|| panic!("network {network} has no IPAM config"));
    (
        cfg.subnet
            .unwrap_or_else(|| panic!("network {network} has no subnet")),
        cfg.gateway
            .unwrap_or_else(|| panic!("network {network} has no gateway")),
    )
}

/// Polls `probe tcp host port` in `container` until it connects (deadline 15 s).
pub async fn wait_tcp(d: &DockerBackend, container: &str, host: &str, port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let port = port.to_string();
    loop {
        let r = exec_in(d, container, &["probe", "tcp", host, &port, "500"], None).await;
        if r.exit_code == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{host}:{port} never became reachable from {container}: {}",
            r.stdout_str()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Makes a temp dir usable by the sandbox user (`uid:gid`) and the proxy user: the test process
/// runs as root here, so chown when possible, else open the mode.
pub fn share_dir(dir: &Path, uid: u32, gid: u32, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::os::unix::fs::chown(dir, Some(uid), Some(gid));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Options for [`TestEnv::start`].
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Extra TOML appended to the generated `kennel.toml` (e.g. `[resources]`).
    pub spec_extra: String,
    /// Start the HTTP/HTTPS/UDP origin on the egress network.
    pub origin: bool,
    /// Policy file text; `None` = allow `origin.kennel-test` and `tls-origin.kennel-test`, with
    /// the private ranges as `cidrs` (the origin has a private address).
    pub policy: Option<String>,
    /// Sandbox image; `None` = [`test_image`].
    pub image: Option<String>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            spec_extra: String::new(),
            origin: true,
            policy: None,
            image: None,
        }
    }
}

/// Default test policy.
pub const TEST_POLICY: &str = "mode = \"enforce\"\n[allow]\nhosts = [\"origin.kennel-test\", \"tls-origin.kennel-test\"]\ncidrs = [\"10.0.0.0/8\", \"172.16.0.0/12\", \"192.168.0.0/16\"]\n";

/// A running environment with its temp dirs, an optional origin, and the cleanup guard.
pub struct TestEnv {
    /// Engine.
    pub d: DockerBackend,
    /// Environment name.
    pub name: String,
    /// Status returned by `create_env`.
    pub status: kennel_container::EnvStatus,
    /// The plan used.
    pub plan: kennel_container::EnvPlan,
    /// Origin container name (on the egress network), if started.
    pub origin: Option<String>,
    /// Host workspace dir.
    pub workspace: tempfile::TempDir,
    /// Host policy dir.
    pub policy_dir: tempfile::TempDir,
    /// Dir holding the origin's certificate and key.
    pub certs: tempfile::TempDir,
    /// The test image tag.
    pub image: String,
    /// Cleanup (declared last: dropped after the temp dirs' owners are done).
    pub guard: EnvGuard,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv").field("name", &self.name).finish()
    }
}

/// Mints a test CA and a leaf for `tls-origin.kennel-test` into `dir` (`cert.pem`, `key.pem`),
/// and the CA into `ws/ca.pem`.
pub fn mint_certs(dir: &Path, ws: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: with rcgen's default DN on both, OpenSSL sees the leaf as self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kennel test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        CertificateParams::new(vec!["tls-origin.kennel-test".to_string()]).expect("leaf params");
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tls-origin.kennel-test");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf cert");
    std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).expect("write key");
    std::fs::write(ws.join("ca.pem"), ca.pem()).expect("write ca");
}

impl TestEnv {
    /// Creates an environment named `<prefix>-<unique>` from the test image. `None` when the
    /// engine or the static proxy binary is missing outside CI (reason printed).
    pub async fn start(test: &str, prefix: &str, opts: EnvOptions) -> Option<TestEnv> {
        let d = engine(test).await?;
        let proxy_bin = proxy_binary(test)?;
        let name = unique_env(prefix);
        let guard = EnvGuard::new(&name);
        let image = match &opts.image {
            Some(i) => i.clone(),
            None => test_image(&d).await,
        };
        let proxy_image = kennel_container::image::ensure_proxy_image(&d, &proxy_bin)
            .await
            .expect("proxy image");

        let workspace = tempfile::tempdir().expect("workspace dir");
        share_dir(workspace.path(), 1001, 2000, 0o770);
        let policy_dir = tempfile::tempdir().expect("policy dir");
        share_dir(policy_dir.path(), 0, 0, 0o755);
        let certs = tempfile::tempdir().expect("certs dir");
        share_dir(certs.path(), 0, 0, 0o755);
        mint_certs(certs.path(), workspace.path());
        std::fs::write(
            policy_dir.path().join("policy.toml"),
            opts.policy.as_deref().unwrap_or(TEST_POLICY),
        )
        .expect("write policy");

        let toml = format!(
            "name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/busybox\", \"sleep\", \"3600\"]\n{}\n",
            opts.spec_extra
        );
        let spec_path = workspace.path().join("kennel.toml");
        let spec = kennel_container::EnvSpec::parse_str(&toml, &spec_path, workspace.path())
            .expect("test spec");
        let plan = kennel_container::EnvPlan {
            spec,
            policy_dir: policy_dir.path().to_path_buf(),
            proxy_image,
            access_log_dir: None,
            state_labels: vec![("dev.kennel.test".into(), test.into())],
            progress: None,
        };
        let started = std::time::Instant::now();
        let status = d
            .create_env(&plan)
            .await
            .unwrap_or_else(|e| panic!("create_env {name}: {e}"));
        eprintln!("create_env {name}: {:?}", started.elapsed());

        let origin = if opts.origin {
            let egress = kennel_container::backend::names::egress_network(&name);
            let o = start_origin(
                &d,
                &OriginSpec {
                    env: &name,
                    suffix: "origin",
                    network: &egress,
                    aliases: &[
                        "origin.kennel-test",
                        "tls-origin.kennel-test",
                        "denied.kennel-test",
                    ],
                    image: &image,
                    script: "httpd -f -p 80 -h /www & probe udp-echo 7 & openssl s_server -quiet -accept 443 -cert /certs/cert.pem -key /certs/key.pem -www & wait",
                    binds: vec![format!("{}:/certs:ro", certs.path().display())],
                },
            )
            .await;
            wait_tcp(&d, &o, "127.0.0.1", 80).await;
            wait_tcp(&d, &o, "127.0.0.1", 443).await;
            Some(o)
        } else {
            None
        };
        Some(TestEnv {
            d,
            name,
            status,
            plan,
            origin,
            workspace,
            policy_dir,
            certs,
            image,
            guard,
        })
    }

    /// The sandbox container's name.
    pub fn sandbox(&self) -> String {
        kennel_container::backend::names::sandbox(&self.name)
    }

    /// The proxy container's name.
    pub fn proxy(&self) -> String {
        kennel_container::backend::names::proxy(&self.name)
    }

    /// Runs `argv` in the sandbox through the backend's exec (as the sandbox user).
    pub async fn sh(&self, script: &str) -> ExecResult {
        self.run(&["/bin/sh", "-c", script]).await
    }

    /// Runs `argv` in the sandbox through the backend's exec (as the sandbox user).
    pub async fn run(&self, argv: &[&str]) -> ExecResult {
        let s = self
            .d
            .exec(
                &self.name,
                kennel_container::ExecRequest {
                    cmd: argv.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"));
        s.collect().await.expect("collect exec")
    }

    /// IPv4 address of `container` on `network`.
    pub async fn ip(&self, container: &str, network: &str) -> String {
        self.d
            .container_ip(container, network)
            .await
            .expect("inspect")
            .unwrap_or_else(|| panic!("{container} has no address on {network}"))
            .to_string()
    }
}
