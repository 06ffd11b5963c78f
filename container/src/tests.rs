//! Unit tests of the pure parts: spec parsing and validation, the seed layout, hardening
//! settings, image packing, the effective policy directory, the fake backend.

use std::path::Path;

use crate::backend::{Backend, EnvPlan, ExecRequest};
use crate::fake::FakeBackend;
use crate::spec::{
    EnvSpec, ServiceEgress, SpecOverrides, parse_duration, parse_memory, sanitize_env_name,
};
use crate::{SpecError, hardening, image, policy_dir};

fn ws() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn parse(dir: &Path, text: &str) -> Result<EnvSpec, SpecError> {
    EnvSpec::parse_str(text, &dir.join("kennel.toml"), dir)
}

#[test]
fn full_spec_parses_with_defaults_filled() {
    let d = ws();
    std::fs::create_dir_all(d.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        d.path().join(".devcontainer/whitelist.txt"),
        "example.com\n",
    )
    .expect("w");
    let s = parse(
        d.path(),
        r#"
name = "task-foo"
image = "my-dev:1"
[resources]
cpus = 2.5
memory = "512m"
pids = 77
nofile = [10, 20]
[egress]
upstream = "socks5h://host.docker.internal:8900"
[[service]]
name = "postgres"
image = "postgres:16"
env = { POSTGRES_PASSWORD = "dev", N = 3 }
[health]
max_age = "72h"
max_disk_percent = 80
"#,
    )
    .expect("valid spec");
    assert_eq!(s.name, "task-foo");
    assert_eq!(s.user, "1001:2000");
    assert!(s.read_only_rootfs);
    assert_eq!(s.resources.cpus, 2.5);
    assert_eq!(s.resources.memory_bytes, 512 << 20);
    assert_eq!(s.resources.pids, 77);
    assert_eq!(s.resources.nofile, (10, 20));
    assert_eq!(
        s.egress.whitelist.as_deref(),
        Some(d.path().join(".devcontainer/whitelist.txt").as_path())
    );
    assert_eq!(
        s.services[0].env,
        vec![
            ("N".into(), "3".into()),
            ("POSTGRES_PASSWORD".into(), "dev".into())
        ]
    );
    assert_eq!(
        s.health.max_age,
        Some(std::time::Duration::from_secs(72 * 3600))
    );
}

#[test]
fn errors_name_file_line_column_and_key() {
    let d = ws();
    let e =
        parse(d.path(), "name = \"ok\"\n[resources]\nmemory = \"8x\"\n").expect_err("bad memory");
    let msg = e.to_string();
    assert!(
        msg.contains("kennel.toml:3:10: key `resources.memory`"),
        "{msg}"
    );
    let e = parse(d.path(), "name = \"ok\"\n[resources]\nmemroy = \"8g\"\n").expect_err("typo");
    let msg = e.to_string();
    assert!(
        msg.contains("kennel.toml:3:1:") && msg.contains("memroy"),
        "{msg}"
    );
    let e = parse(d.path(), "user = \"0:0\"\n").expect_err("root");
    assert!(
        e.to_string().contains("key `user`: must not be root"),
        "{e}"
    );
    let e = parse(d.path(), "name = \"Bad_Name\"\n").expect_err("name");
    assert!(e.to_string().contains("key `name`"), "{e}");
    let e = parse(d.path(), "[egress]\nupstream = \"ftp://x:1\"\n").expect_err("upstream");
    assert!(e.to_string().contains("key `egress.upstream`"), "{e}");
    let e =
        parse(d.path(), "[[service]]\nname = \"proxy\"\nimage = \"x\"\n").expect_err("reserved");
    assert!(e.to_string().contains("reserved"), "{e}");
    let e = parse(d.path(), "[resources]\nnofile = [10, 5]\n").expect_err("nofile");
    assert!(e.to_string().contains("resources.nofile"), "{e}");
}

#[test]
fn seed_layout_without_kennel_toml() {
    let parent = ws();
    let dir = parent.path().join("My Project_2");
    std::fs::create_dir_all(dir.join(".devcontainer")).expect("mkdir");
    std::fs::write(dir.join(".devcontainer/whitelist.txt"), "github.com\n").expect("w");
    std::fs::write(
        dir.join(".devcontainer/.env"),
        "UPSTREAM_SOCKS5=host.docker.internal:8900\nUSER_WHITELIST_DOMAINS=a.example, b.example\n",
    )
    .expect("w");
    let s = EnvSpec::from_workspace(&dir, &SpecOverrides::default()).expect("seed layout");
    assert_eq!(s.name, "my-project-2");
    assert_eq!(s.workspace, dir);
    assert_eq!(s.user, "1001:2000");
    assert_eq!(
        s.egress.whitelist,
        Some(dir.join(".devcontainer/whitelist.txt"))
    );
    assert_eq!(
        s.egress.legacy.upstream_socks5.as_deref(),
        Some("host.docker.internal:8900")
    );
    // The legacy upstream becomes the policy's default upstream, names resolved remotely.
    assert_eq!(
        policy_dir::effective_upstream(&s).expect("valid legacy variables"),
        "socks5h://host.docker.internal:8900"
    );

    let o = SpecOverrides {
        name: Some("other".into()),
        image: Some("img:2".into()),
        ..Default::default()
    };
    let s = EnvSpec::from_workspace(&dir, &o).expect("overrides");
    assert_eq!((s.name.as_str(), s.image.as_str()), ("other", "img:2"));
    let bad = SpecOverrides {
        name: Some("-bad".into()),
        ..Default::default()
    };
    assert!(EnvSpec::from_workspace(&dir, &bad).is_err());
}

#[test]
fn value_parsers() {
    assert_eq!(parse_memory("8g"), Some(8 << 30));
    assert_eq!(parse_memory("8GiB"), Some(8 << 30));
    assert_eq!(parse_memory("512m"), Some(512 << 20));
    assert_eq!(parse_memory("123"), Some(123));
    assert_eq!(parse_memory("x"), None);
    assert_eq!(parse_memory("0"), None);
    assert_eq!(parse_duration("2d").map(|d| d.as_secs()), Some(172_800));
    assert_eq!(parse_duration("h"), None);
    assert_eq!(sanitize_env_name("--Foo..Bar--"), Some("foo-bar".into()));
    assert_eq!(sanitize_env_name("___"), None);
    assert!(crate::spec::validate_env_name(&"a".repeat(41)).is_err());
    assert!(crate::spec::validate_env_name(&"a".repeat(40)).is_ok());
}

fn plan(dir: &Path, extra: &str) -> EnvPlan {
    let spec = parse(dir, &format!("name = \"t\"\nimage = \"img\"\n{extra}")).expect("spec");
    EnvPlan {
        spec,
        policy_dir: dir.to_path_buf(),
        proxy_image: "kennel-proxy:abc".into(),
        access_log_dir: None,
        state_labels: vec![("k".into(), "v".into())],
        progress: None,
    }
}

#[test]
fn sandbox_settings_are_hardened() {
    let d = ws();
    let token = d.path().join("tok");
    std::fs::write(&token, "t").expect("w");
    let p = plan(
        d.path(),
        &format!("[credentials]\ngit_token_file = \"{}\"\n", token.display()),
    );
    let c = hardening::sandbox_container(&p, Some(Path::new("/state/askpass")), None);
    let h = c.host_config.as_ref().expect("host config");
    assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(h.readonly_rootfs, Some(true));
    assert_eq!(h.privileged, Some(false));
    assert_eq!(
        h.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(h.network_mode.as_deref(), Some("kennel-t"));
    assert_eq!(h.dns, Some(vec!["127.0.0.1".to_string()]));
    assert_eq!(h.pids_limit, Some(1000));
    assert_eq!(h.memory, Some(8 << 30));
    assert_eq!(h.nano_cpus, Some(4_000_000_000));
    let binds = h.binds.clone().unwrap_or_default();
    assert!(binds.iter().all(|b| !b.contains("docker.sock")));
    assert!(binds.contains(&format!("{}:/run/kennel/git-token:ro", token.display())));
    let env = c.env.clone().unwrap_or_default();
    assert!(env.contains(&"HTTPS_PROXY=http://proxy:8888".to_string()));
    assert!(env.contains(&"https_proxy=http://proxy:8888".to_string()));
    assert!(env.contains(&"GIT_ASKPASS=/run/kennel/git-askpass".to_string()));
    assert_eq!(c.user.as_deref(), Some("1001:2000"));
    let labels = c.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("dev.kennel.env").map(String::as_str), Some("t"));
    assert_eq!(
        labels.get("dev.kennel.role").map(String::as_str),
        Some("sandbox")
    );
    assert_eq!(labels.get("k").map(String::as_str), Some("v"));
    // Home is the environment's volume (kept across down/up), not a tmpfs.
    let tmpfs = h.tmpfs.clone().unwrap_or_default();
    assert!(!tmpfs.contains_key("/home/claude"));
    assert!(
        h.binds
            .clone()
            .unwrap_or_default()
            .contains(&"kennel-t-home:/home/claude:rw".to_string())
    );

    let n = hardening::internal_network(&p);
    assert_eq!(n.internal, Some(true));
    assert_eq!(
        n.options
            .unwrap_or_default()
            .get(hardening::INHIBIT_IPV4)
            .map(String::as_str),
        Some("true")
    );
    let proxy = hardening::proxy_container(&p, None);
    let ph = proxy.host_config.expect("host");
    assert_eq!(
        ph.binds,
        Some(vec![format!("{}:/etc/kennel:ro", d.path().display())])
    );
    assert_eq!(proxy.user.as_deref(), Some("65532:65532"));
    let shown = "/state/a \"b\"\\c\n\u{7f}é/policy.toml";
    let config = hardening::proxy_config("10.9.0.2".parse().expect("ip"), shown);
    // What the proxy reads back (its own parser): deny messages name the host path of the
    // policy, whatever characters it holds.
    let cfg = kennel_proxy::config::ProxyConfig::from_toml_str(&config, Path::new("k.toml"))
        .expect("the written config parses");
    assert_eq!(cfg.admin, Some("10.9.0.2:9901".parse().expect("addr")));
    assert_eq!(cfg.listen, vec!["0.0.0.0:8888".parse().expect("addr")]);
    assert_eq!(cfg.policy.shown_as.as_deref(), Some(shown));
    assert_eq!(
        cfg.policy.file.as_deref(),
        Some(Path::new("/etc/kennel/policy.toml"))
    );
    assert_eq!(
        cfg.access_log.destination,
        kennel_proxy::config::LogDestination::Stdout
    );
}

/// The access-log directory is mounted read-write into the proxy only (never the sandbox), and
/// the proxy config writes a size-capped log there.
#[test]
fn access_log_dir_goes_to_the_proxy_only() {
    let d = ws();
    let logs = tempfile::tempdir().expect("logs");
    let mut p = plan(d.path(), "");
    p.access_log_dir = Some(logs.path().to_path_buf());
    let binds = hardening::proxy_container(&p, None)
        .host_config
        .and_then(|h| h.binds)
        .expect("binds");
    assert!(
        binds.contains(&format!("{}:/var/log/kennel:rw", logs.path().display())),
        "{binds:?}"
    );
    let sandbox = hardening::sandbox_container(&p, None, None);
    let sb = format!("{:?}", sandbox.host_config);
    assert!(!sb.contains(&logs.path().display().to_string()), "{sb}");
    let config = hardening::proxy_config_with_log("10.9.0.2".parse().expect("ip"), "/p", true);
    let cfg = kennel_proxy::config::ProxyConfig::from_toml_str(&config, Path::new("k.toml"))
        .expect("the written config parses");
    assert_eq!(
        cfg.access_log.destination,
        kennel_proxy::config::LogDestination::File {
            file: "/var/log/kennel/access.log".into()
        }
    );
    assert_eq!(
        cfg.access_log.rotate_bytes,
        Some(8 * 1024 * 1024),
        "{config}"
    );
}

#[test]
fn image_pack_is_deterministic_and_content_tagged() {
    let a = image::RootfsImage::new()
        .file("/bin/x", "abc", 0o755)
        .cmd(&["/bin/x"]);
    let (tag1, tar1) = a.pack("repo").expect("pack");
    let (tag2, tar2) = a.pack("repo").expect("pack");
    assert_eq!(tag1, tag2);
    assert_eq!(tar1, tar2);
    let b = image::RootfsImage::new()
        .file("/bin/x", "abd", 0o755)
        .cmd(&["/bin/x"]);
    assert_ne!(b.pack("repo").expect("pack").0, tag1);
    let mut ar = tar::Archive::new(tar1.as_slice());
    let names: Vec<String> = ar
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    assert!(names.contains(&"manifest.json".to_string()), "{names:?}");
}

#[test]
fn elf_interpreter_tells_static_from_dynamic() {
    let sh = Path::new("/bin/sh");
    if sh.is_file() {
        let interp = image::elf_interpreter(sh).expect("elf");
        assert!(interp.is_some_and(|i| i.contains("ld-linux")));
    }
    let d = ws();
    let f = d.path().join("not-elf");
    std::fs::write(&f, "#!/bin/sh\n").expect("w");
    assert!(image::elf_interpreter(&f).is_err());
    assert!(matches!(
        image::proxy_rootfs(sh),
        Err(crate::ImageError::NotStatic { .. })
    ));
}

#[test]
fn effective_policy_dir_loads_in_the_policy_crate() {
    let d = ws();
    std::fs::create_dir_all(d.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        d.path().join(".devcontainer/.env"),
        "NO_UPSTREAM=corp.example\nUSER_WHITELIST_DOMAINS=extra.example\n",
    )
    .expect("w");
    let spec = parse(
        d.path(),
        "name = \"p\"\n[egress]\nupstream = \"http://up.example:3128\"\n",
    )
    .expect("spec");
    let out = d.path().join("policy");
    let file =
        policy_dir::write_effective_policy(&out, &spec, Some("project.example\n")).expect("write");
    let policy = kennel_policy::Policy::load(&file).expect("the written policy loads");
    let allowed = |h: &str| {
        policy
            .decide(&kennel_policy::Target::from_host_port(h, 443).expect("target"))
            .is_allowed()
    };
    assert!(allowed("github.com"), "embedded default list included");
    assert!(
        allowed("sub.project.example"),
        "project whitelist, seed meaning"
    );
    assert!(allowed("extra.example"), "USER_WHITELIST_DOMAINS");
    assert!(!allowed("evil.example"));
    let up = policy.upstream_for(&kennel_policy::Host::parse("x.corp.example").expect("host"));
    assert_eq!(up.to_string(), "direct");
    let up = policy.upstream_for(&kennel_policy::Host::parse("other.example").expect("host"));
    assert!(up.to_string().starts_with("http://up.example:3128"), "{up}");
}

#[tokio::test]
async fn fake_backend_conflicts_execs_and_removes() {
    let d = ws();
    let fake = FakeBackend::new();
    let p = plan(d.path(), "");
    let st = fake.create_env(&p).await.expect("create");
    assert_eq!(st.containers.len(), 2);
    assert!(matches!(
        fake.create_env(&p).await,
        Err(crate::BackendError::AlreadyExists(_))
    ));
    let r = fake
        .exec(
            "t",
            ExecRequest {
                cmd: vec!["echo".into(), "hi".into()],
                ..Default::default()
            },
        )
        .await
        .expect("exec")
        .collect()
        .await
        .expect("collect");
    assert_eq!((r.stdout_str().as_str(), r.exit_code), ("echo hi\n", 0));
    fake.remove_env("t").await.expect("remove");
    assert!(fake.inspect_env("t").await.expect("inspect").is_none());
    assert!(matches!(
        fake.exec("t", ExecRequest::default()).await,
        Err(crate::BackendError::NotFound(_))
    ));
}

#[test]
fn env_table_env_file_and_dotenv_merge_and_proxy_variables_are_refused_with_the_place() {
    let d = ws();
    std::fs::create_dir_all(d.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        d.path().join(".devcontainer/.env"),
        "UPSTREAM_SOCKS5=h:1080\nA=dotenv\nB=dotenv\nC=dotenv\n",
    )
    .expect("w");
    std::fs::write(d.path().join("vars.env"), "B=file\nC=file\n").expect("w");
    let s = parse(
        d.path(),
        "env_file = \"vars.env\"\n[env]\nC = \"table\"\nN = 3\n",
    )
    .expect("valid");
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        s.env.merged(),
        vec![
            kv("A", "dotenv"),
            kv("B", "file"),
            kv("C", "table"),
            kv("N", "3")
        ]
    );
    // The .env's proxy settings configure the proxy, not the sandbox.
    assert!(!s.env.names().contains(&"UPSTREAM_SOCKS5".to_string()));
    // Values never show in a Debug print of the spec.
    assert!(!format!("{s:?}").contains("dotenv\""), "{s:?}");

    let e = parse(
        d.path(),
        "name = \"x\"\n[env]\nHttps_Proxy = \"http://evil:1\"\n",
    )
    .expect_err("proxy variable")
    .to_string();
    assert!(e.contains("kennel.toml:2:1"), "{e}");
    assert!(e.contains("env.Https_Proxy"), "{e}");
    assert!(e.contains("proxy variables are kennel's"), "{e}");
    std::fs::write(d.path().join("bad.env"), "NO_PROXY=*\n").expect("w");
    let e = parse(d.path(), "env_file = \"bad.env\"\n")
        .expect_err("proxy variable in env_file")
        .to_string();
    assert!(e.contains("bad.env") && e.contains("NO_PROXY"), "{e}");
}

#[test]
fn mounts_are_read_only_by_default_and_kennel_paths_are_refused() {
    let d = ws();
    let src = d.path().join("data");
    std::fs::create_dir(&src).expect("mkdir");
    let s = parse(
        d.path(),
        "name = \"t\"\n[[mount]]\nsource = \"data\"\ntarget = \"/data\"\n[[mount]]\nsource = \"data\"\ntarget = \"/home/claude/.cache\"\nrw = true\n",
    )
    .expect("valid");
    let binds = hardening::sandbox_binds(&s, None);
    let data = src.display();
    assert!(binds.contains(&format!("{data}:/data:ro")), "{binds:?}");
    assert!(
        binds.contains(&format!("{data}:/home/claude/.cache:rw")),
        "{binds:?}"
    );
    for target in [
        "/workspace/x",
        "/home/claude",
        "/tmp",
        "/run/kennel/x",
        "/proc/x",
        "rel",
    ] {
        let e = parse(
            d.path(),
            &format!("[[mount]]\nsource = \"data\"\ntarget = \"{target}\"\n"),
        )
        .expect_err(target)
        .to_string();
        assert!(e.contains("mount.target"), "{target}: {e}");
    }
    let e = parse(d.path(), "[[mount]]\nsource = \"nope\"\ntarget = \"/x\"\n")
        .expect_err("missing")
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn agent_config_copy_must_exist_and_name_is_default_only_without_a_name() {
    let d = ws();
    let cfg = d.path().join(".claude");
    std::fs::create_dir(&cfg).expect("mkdir");
    let s = parse(
        d.path(),
        &format!(
            "[credentials]\nagent_config_copy = [\"{}\"]\n",
            cfg.display()
        ),
    )
    .expect("valid");
    assert_eq!(s.credentials.agent_config_copy, vec![cfg.clone()]);
    assert!(s.name_is_default);
    assert!(
        !parse(d.path(), "name = \"x\"\n")
            .expect("valid")
            .name_is_default
    );
    let e = parse(
        d.path(),
        "[credentials]\nagent_config_copy = [\"/nonexistent/.codex\"]\n",
    )
    .expect_err("missing")
    .to_string();
    assert!(e.contains("credentials.agent_config_copy"), "{e}");
}

#[test]
fn sandbox_gets_workspace_variables_then_kennels_and_the_git_mounts() {
    let d = ws();
    let st = std::process::Command::new("git")
        .arg("-C")
        .arg(d.path())
        .args(["init", "-q"])
        .status()
        .expect("host git");
    assert!(st.success());
    let p = plan(d.path(), "[env]\nRUST_LOG = \"debug\"\n");
    let git = crate::git::discover(d.path())
        .expect("discover")
        .expect("repo");
    let c = hardening::sandbox_container(&p, None, Some(&git));
    let env = c.env.clone().unwrap_or_default();
    let pos = |k: &str| env.iter().position(|e| e.starts_with(k));
    assert!(env.contains(&"RUST_LOG=debug".to_string()), "{env:?}");
    // The workspace's variables come first; kennel's follow (and their names are refused in
    // the workspace's sources anyway).
    assert!(pos("RUST_LOG=") < pos("HTTP_PROXY="), "{env:?}");
    assert!(
        env.contains(&"GIT_CONFIG_VALUE_0=/workspace".to_string()),
        "{env:?}"
    );
    let binds = c.host_config.and_then(|h| h.binds).unwrap_or_default();
    let hooks = format!("{}/.git/hooks:/workspace/.git/hooks:ro", d.path().display());
    assert!(binds.contains(&hooks), "{binds:?}");
}

#[test]
fn health_command_interval_and_deferral_parse_with_clear_errors() {
    let d = ws();
    let s = parse(
        d.path(),
        "name = \"ok\"\n[health]\ncommand = [\"/bin/true\"]\nhealthcheck = true\nfailures = 5\ninterval = \"10s\"\nmax_defer = \"1h\"\n",
    )
    .expect("valid");
    assert_eq!(s.health.command, Some(vec!["/bin/true".to_string()]));
    assert!(s.health.healthcheck && s.health.has_rules());
    assert_eq!(s.health.failures, Some(5));
    assert_eq!(s.health.interval, Some(std::time::Duration::from_secs(10)));
    assert_eq!(
        s.health.max_defer,
        Some(std::time::Duration::from_secs(3600))
    );
    let interval_only =
        parse(d.path(), "name = \"ok\"\n[health]\ninterval = \"10s\"\n").expect("ok");
    assert!(
        !interval_only.health.has_rules(),
        "an interval alone is no rule"
    );
    for (text, key) in [
        ("command = []", "health.command"),
        ("interval = \"0s\"", "health.interval"),
        ("max_defer = \"soon\"", "health.max_defer"),
        ("failures = 0", "health.failures"),
    ] {
        let e = parse(d.path(), &format!("name = \"ok\"\n[health]\n{text}\n")).expect_err(text);
        assert!(
            e.to_string().contains("kennel.toml:3:") && e.to_string().contains(key),
            "{text}: {e}"
        );
    }
}

#[test]
fn the_proxy_config_names_the_environment_for_kennel_allow_hints() {
    let c = hardening::proxy_config_for_env(
        std::net::Ipv4Addr::new(10, 1, 2, 3),
        "/state/policy.toml",
        true,
        "task-a",
    );
    let parsed: toml::Table = toml::from_str(&c).expect("valid TOML");
    assert_eq!(
        parsed["policy"]["kennel_env"].as_str(),
        Some("task-a"),
        "{c}"
    );
    assert_eq!(
        parsed["policy"]["shown_as"].as_str(),
        Some("/state/policy.toml")
    );
    assert!(parsed.get("access_log").is_some());
}

/// Issue 15 item 3: the effective policy is serialised by `toml`, and what the proxy loads from
/// it decides every request as the proxy's own reading of the same `.env` does (embedded list +
/// legacy variables), including the `NO_UPSTREAM` routes and the legacy upstream's credentials.
#[test]
fn effective_policy_round_trips_to_the_same_decisions_as_the_env() {
    let d = ws();
    std::fs::create_dir_all(d.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(
        d.path().join(".devcontainer/.env"),
        "UPSTREAM_PROXY=socks5h://us%22er:p%5Cw@host.docker.internal:8900\n\
         NO_UPSTREAM=corp.example,.internal.example\n\
         USER_WHITELIST_DOMAINS=extra.example,.wild.example\n",
    )
    .expect("w");
    let spec = parse(d.path(), "name = \"p\"\n").expect("spec");
    let out = d.path().join("pol \"q\"");
    let file = policy_dir::write_effective_policy(&out, &spec, None).expect("write");
    let written = kennel_policy::Policy::load(&file).expect("the written policy loads");
    let reference =
        kennel_policy::Policy::embedded_default_with(&spec.egress.legacy).expect("reference");
    for (host, port) in [
        ("github.com", 443),
        ("api.github.com", 443),
        ("extra.example", 443),
        ("a.extra.example", 443),
        ("a.wild.example", 80),
        ("wild.example", 443),
        ("evil.example", 443),
        ("github.com", 22),
        ("corp.example", 443),
        ("10.1.2.3", 443),
    ] {
        let t = kennel_policy::Target::from_host_port(host, port).expect("target");
        assert_eq!(
            written.decide(&t).is_allowed(),
            reference.decide(&t).is_allowed(),
            "{host}:{port}"
        );
    }
    for host in ["corp.example", "x.internal.example", "other.example"] {
        let h = kennel_policy::Host::parse(host).expect("host");
        assert_eq!(
            written.upstream_for(&h),
            reference.upstream_for(&h),
            "{host}"
        );
    }
    let h = kennel_policy::Host::parse("other.example").expect("host");
    assert!(
        written
            .upstream_for(&h)
            .to_string()
            .starts_with("socks5h://"),
        "legacy upstream applies"
    );
}

/// Issue 15 item 6: one `ExecRequest` from the CLI to the engine. As the daemon's request body
/// only `cmd` is required, and an unknown field is refused (a misspelt `stdin` would otherwise
/// silently run the command without input).
#[test]
fn exec_request_is_also_the_wire_type() {
    let r: ExecRequest = serde_json::from_str(r#"{"cmd":["ls","-l"]}"#).expect("minimal body");
    assert_eq!(
        r,
        ExecRequest {
            cmd: vec!["ls".into(), "-l".into()],
            ..Default::default()
        }
    );
    let full = ExecRequest {
        cmd: vec!["sh".into()],
        tty: true,
        env: vec!["A=1".into()],
        workdir: Some("/workspace/x".into()),
        stdin: true,
    };
    let back: ExecRequest =
        serde_json::from_str(&serde_json::to_string(&full).expect("json")).expect("parse");
    assert_eq!(back, full);
    let e = serde_json::from_str::<ExecRequest>(r#"{"cmd":["sh"],"stdn":true}"#)
        .expect_err("unknown field");
    assert!(e.to_string().contains("stdn"), "{e}");
}

#[test]
fn a_dind_whitelist_of_the_old_layout_becomes_the_dind_egress_profile() {
    let d = ws();
    std::fs::create_dir_all(d.path().join(".devcontainer")).expect("mkdir");
    std::fs::write(d.path().join(".devcontainer/whitelist.txt"), "github.com\n").expect("w");
    let without = EnvSpec::from_workspace(d.path(), &SpecOverrides::default()).expect("seed");
    assert!(without.egress.profiles.is_empty());
    let dind = d.path().join(".devcontainer/dind-whitelist.txt");
    std::fs::write(&dind, "registry-1.docker.io\n").expect("w");
    let with = EnvSpec::from_workspace(d.path(), &SpecOverrides::default()).expect("seed");
    // Used now, and not named as unused.
    assert!(
        with.warnings.iter().all(|w| !w.contains("dind-whitelist")),
        "{:?}",
        with.warnings
    );
    let p = with.egress.profile("dind").expect("the dind profile");
    assert_eq!(p.include, vec![dind.clone()]);
    assert_eq!(p.lists, vec!["registry-1.docker.io\n".to_string()]);
    assert_eq!(p.upstream, None);
    // kennel.toml's own `dind` profile wins over the seed file.
    std::fs::write(d.path().join("own.txt"), "own.example\n").expect("w");
    std::fs::write(
        d.path().join("kennel.toml"),
        "name = \"t\"\n[egress.profiles.dind]\ninclude = [\"own.txt\"]\n",
    )
    .expect("w");
    let own = EnvSpec::from_workspace(d.path(), &SpecOverrides::default()).expect("toml");
    assert_eq!(own.egress.profiles.len(), 1);
    assert_eq!(
        own.egress.profile("dind").expect("dind").lists,
        vec!["own.example\n".to_string()]
    );
    // An invalid seed file is an error naming it, not a silent skip.
    std::fs::remove_file(d.path().join("kennel.toml")).expect("rm");
    std::fs::write(&dind, "docker\\.io.*\n").expect("w");
    let e = EnvSpec::from_workspace(d.path(), &SpecOverrides::default())
        .expect_err("invalid list")
        .to_string();
    assert!(e.contains("dind-whitelist.txt"), "{e}");
}

#[test]
fn egress_profiles_parse_with_their_include_text_upstream_and_services() {
    let d = ws();
    std::fs::create_dir_all(d.path().join("lists")).expect("mkdir");
    std::fs::write(d.path().join("lists/extra.txt"), "extra.example\n").expect("w");
    std::fs::write(d.path().join("lists/more.txt"), "# c\nmore.example\n").expect("w");
    std::fs::write(d.path().join("b.txt"), "b.example\n").expect("w");
    let spec = parse(
        d.path(),
        "name = \"t\"\n\
         [egress.profiles.extra]\n\
         include = [\"lists/extra.txt\", \"lists/more.txt\"]\n\
         upstream = \"socks5h://host.docker.internal:1080\"\n\
         [egress.profiles.b]\n\
         include = [\"b.txt\"]\n\
         [[service]]\nname = \"fetcher\"\nimage = \"busybox\"\negress = \"extra\"\n",
    )
    .expect("spec");
    let names: Vec<&str> = spec
        .egress
        .profiles
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["b", "extra"], "sorted by name");
    let extra = spec.egress.profile("extra").expect("extra");
    assert_eq!(
        extra.include,
        vec![
            d.path().join("lists/extra.txt"),
            d.path().join("lists/more.txt")
        ]
    );
    assert_eq!(extra.lists[1], "# c\nmore.example\n");
    assert_eq!(
        extra.upstream.as_deref(),
        Some("socks5h://host.docker.internal:1080")
    );
    assert_eq!(
        spec.services[0].egress,
        ServiceEgress::Profile("extra".into())
    );
    // Through the wire form and back unchanged.
    let back: EnvSpec = kennel_api::types::SpecDoc::from(&spec).into();
    assert_eq!(back.egress.profiles, spec.egress.profiles);
    assert_eq!(back.services[0].egress, spec.services[0].egress);
}

#[test]
fn egress_profile_errors_name_the_file_line_and_key() {
    let d = ws();
    std::fs::write(d.path().join("ok.txt"), "ok.example\n").expect("w");
    std::fs::write(d.path().join("regex.txt"), "github\\.com.*\n").expect("w");
    for (text, line, key, says) in [
        (
            "name = \"t\"\n[egress.profiles.proxy]\ninclude = []\n",
            2,
            "egress.profiles.proxy",
            "reserved",
        ),
        (
            "name = \"t\"\n[egress.profiles.none]\n",
            2,
            "egress.profiles.none",
            "reserved",
        ),
        (
            "name = \"t\"\n[egress.profiles.Big]\n",
            2,
            "egress.profiles.Big",
            "lowercase",
        ),
        (
            "name = \"t\"\n[egress.profiles.x]\ninclude = [\"ok.txt\", \"missing.txt\"]\n",
            3,
            "egress.profiles.x.include",
            "missing.txt",
        ),
        (
            "name = \"t\"\n[egress.profiles.x]\ninclude = [\"regex.txt\"]\n",
            3,
            "egress.profiles.x.include",
            "regex.txt",
        ),
        (
            "name = \"t\"\n[egress.profiles.x]\nupstream = \"ftp://h:1\"\n",
            3,
            "egress.profiles.x.upstream",
            "socks5://",
        ),
        (
            "name = \"t\"\n[egress.profiles.x]\n[[service]]\nname = \"db\"\nimage = \"i\"\negress = \"y\"\n",
            6,
            "service.egress",
            "service \"db\": there is no egress profile \"y\" (defined: x)",
        ),
        (
            "name = \"t\"\n[[service]]\nname = \"db\"\nimage = \"i\"\negress = \"dind\"\n",
            5,
            "service.egress",
            "none is defined",
        ),
        (
            "name = \"t\"\n[egress.profiles.x]\n[[service]]\nname = \"proxy-x\"\nimage = \"i\"\n",
            4,
            "service.name",
            "egress profile \"x\"",
        ),
    ] {
        let e = parse(d.path(), text).expect_err(text);
        let SpecError::Invalid {
            line: l, key: k, ..
        } = &e
        else {
            panic!("{text}: not a positioned error: {e}");
        };
        let msg = e.to_string();
        assert_eq!((*l, k.as_deref()), (line, Some(key)), "{text}: {msg}");
        assert!(msg.contains("kennel.toml:"), "{msg}");
        assert!(msg.contains(says), "{text}: {msg}");
    }
    // An unknown key in a profile is refused with its position.
    let e = parse(
        d.path(),
        "name = \"t\"\n[egress.profiles.x]\nwhitelist = \"ok.txt\"\n",
    )
    .expect_err("unknown key")
    .to_string();
    assert!(
        e.contains("kennel.toml:3:") && e.contains("whitelist"),
        "{e}"
    );
}

#[test]
fn a_profile_proxy_is_hardened_like_the_proxy_and_its_services_use_it() {
    let d = ws();
    let state = d.path().join("env");
    let main_policy = state.join("policy");
    std::fs::create_dir_all(&main_policy).expect("mkdir");
    std::fs::write(d.path().join("x.txt"), "x.example\n").expect("w");
    let spec = parse(
        d.path(),
        "name = \"t\"\nimage = \"img\"\n[egress.profiles.extra]\ninclude = [\"x.txt\"]\n\
         [[service]]\nname = \"fetcher\"\nimage = \"busybox\"\negress = \"extra\"\n",
    )
    .expect("spec");
    let p = EnvPlan {
        spec,
        policy_dir: main_policy.clone(),
        proxy_image: "kennel-proxy:abc".into(),
        access_log_dir: Some(state.join("logs")),
        state_labels: vec![("k".into(), "v".into())],
        progress: None,
    };
    assert_eq!(
        crate::profile_proxy_name("t", "extra"),
        "kennel-t-proxy-extra"
    );
    assert_eq!(crate::profile_proxy_url("extra"), "http://proxy-extra:8888");
    let main = hardening::proxy_container(&p, None);
    let prof = hardening::proxy_container(&p, Some("extra"));
    let (mh, ph) = (
        main.host_config.clone().expect("host"),
        prof.host_config.clone().expect("host"),
    );
    // Same hardening and limits.
    assert_eq!(ph.cap_drop, mh.cap_drop);
    assert_eq!(ph.security_opt, mh.security_opt);
    assert_eq!(ph.readonly_rootfs, Some(true));
    assert_eq!(ph.privileged, Some(false));
    assert_eq!((ph.memory, ph.pids_limit), (mh.memory, mh.pids_limit));
    assert_eq!(prof.user, main.user);
    // On its profile's own network, never on the sandbox's (there the sandbox could use it as
    // its proxy and get the profile's allowlist).
    assert_eq!(ph.network_mode.as_deref(), Some("kennel-t-net-extra"));
    assert_eq!(mh.network_mode.as_deref(), Some("kennel-t"));
    // Its own policy directory and log directory, never the environment's.
    assert_eq!(
        ph.binds.clone().unwrap_or_default(),
        vec![
            format!("{}:/etc/kennel:ro", state.join("policy-extra").display()),
            format!("{}:/var/log/kennel:rw", state.join("logs-extra").display()),
        ]
    );
    let labels = prof.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("dev.kennel.role").map(String::as_str),
        Some("profile-proxy")
    );
    assert_eq!(
        labels.get("dev.kennel.profile").map(String::as_str),
        Some("extra")
    );
    assert_eq!(labels.get("dev.kennel.env").map(String::as_str), Some("t"));
    let endpoints = prof
        .networking_config
        .and_then(|n| n.endpoints_config)
        .unwrap_or_default();
    assert_eq!(
        endpoints.keys().collect::<Vec<_>>(),
        ["kennel-t-net-extra"],
        "the profile's proxy is not on the environment's network"
    );
    let aliases = endpoints
        .get("kennel-t-net-extra")
        .and_then(|e| e.aliases.clone());
    assert_eq!(aliases, Some(vec!["proxy-extra".to_string()]));
    // The profile's network: made like the environment's internal network, labelled so
    // `kennel down` and a failed `up`'s rollback remove it.
    let (pn, n) = (
        hardening::profile_network(&p, "extra"),
        hardening::internal_network(&p),
    );
    assert_eq!(pn.name, "kennel-t-net-extra");
    assert_eq!(
        (
            pn.internal,
            pn.attachable,
            pn.enable_ipv6,
            &pn.options,
            &pn.driver
        ),
        (
            n.internal,
            n.attachable,
            n.enable_ipv6,
            &n.options,
            &n.driver
        )
    );
    assert_eq!(pn.internal, Some(true));
    let pl = pn.labels.clone().unwrap_or_default();
    assert_eq!(pl.get("dev.kennel.env").map(String::as_str), Some("t"));
    assert_eq!(
        pl.get("dev.kennel.profile").map(String::as_str),
        Some("extra")
    );
    assert_eq!(pl.get("k").map(String::as_str), Some("v"));
    // The service: proxy variables at the profile's proxy, internal network only.
    let svc = hardening::service_container(&p, &p.spec.services[0]);
    let vars = svc.env.clone().unwrap_or_default();
    assert!(
        vars.contains(&"HTTP_PROXY=http://proxy-extra:8888".to_string()),
        "{vars:?}"
    );
    assert!(
        vars.contains(&"https_proxy=http://proxy-extra:8888".to_string()),
        "{vars:?}"
    );
    let nets: Vec<String> = svc
        .networking_config
        .and_then(|n| n.endpoints_config)
        .map(|e| e.into_keys().collect())
        .unwrap_or_default();
    assert_eq!(nets, ["kennel-t"], "created on the environment's network");
    // ... and connected to its profile's network, where `proxy-extra` is.
    assert_eq!(
        hardening::service_profile_network("t", &p.spec.services[0]).as_deref(),
        Some("kennel-t-net-extra")
    );
    // The sandbox is on the environment's network only.
    let sb = hardening::sandbox_container(&p, None, None);
    let sb_nets: Vec<String> = sb
        .networking_config
        .and_then(|n| n.endpoints_config)
        .map(|e| e.into_keys().collect())
        .unwrap_or_default();
    assert_eq!(sb_nets, ["kennel-t"]);
    // Egress-side addresses: the environment's proxy first, then one per profile.
    let net = std::net::Ipv4Addr::new(10, 9, 0, 0);
    let gw = std::net::Ipv4Addr::new(10, 9, 0, 1);
    assert_eq!(
        hardening::proxy_egress_ip(net, gw),
        std::net::Ipv4Addr::new(10, 9, 0, 2)
    );
    assert_eq!(
        hardening::proxy_egress_ip_at(net, gw, 1),
        std::net::Ipv4Addr::new(10, 9, 0, 3)
    );
    let gw3 = std::net::Ipv4Addr::new(10, 9, 0, 3);
    assert_eq!(
        hardening::proxy_egress_ip_at(net, gw3, 1),
        std::net::Ipv4Addr::new(10, 9, 0, 4)
    );
}

#[test]
fn a_profile_policy_holds_its_include_files_and_not_the_default_list() {
    let d = ws();
    std::fs::write(d.path().join("x.txt"), "x.example\n").expect("w");
    let spec = parse(
        d.path(),
        "name = \"t\"\n[egress.profiles.extra]\ninclude = [\"x.txt\"]\nupstream = \"http://up.example:3128\"\n",
    )
    .expect("spec");
    let dir = policy_dir::profile_policy_dir(&d.path().join("env/policy"), "extra");
    assert_eq!(dir, d.path().join("env/policy-extra"));
    let file =
        policy_dir::write_profile_policy(&dir, &spec, &spec.egress.profiles[0]).expect("write");
    let policy = kennel_policy::Policy::load(&file).expect("valid");
    let allowed = |t: &str| {
        policy
            .decide(&kennel_policy::Target::parse_authority(t).expect("target"))
            .is_allowed()
    };
    // Seed format: the entry covers its subdomains.
    assert!(allowed("x.example:443") && allowed("a.x.example:443"));
    assert!(
        !allowed("github.com:443"),
        "the default list is the environment's only"
    );
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.contains("http://up.example:3128"), "{text}");
    assert!(
        text.contains(&d.path().join("x.txt").display().to_string()),
        "{text}"
    );
}
