//! `kennel policy check` and `kennel policy migrate`, run as the real binary.

#![allow(clippy::unwrap_used)] // test helpers panic on unexpected errors by design

use std::path::Path;
use std::process::{Command, Output};

/// The seed system's default whitelist (the file kennel embeds), copied into test directories.
const SEED_DEFAULT: &str = include_str!("../../policy/default-whitelist.txt");

/// A `.devcontainer/whitelist.txt` of the seed system: project domains, bare.
const SEED_PROJECT: &str =
    "# project domains\nhuggingface.co\ncdn-lfs.huggingface.co\n\nregistry.terraform.io\n";

/// The seed system's Docker-in-Docker proxy list: bare domains plus Tinyproxy suffix regexes.
const SEED_DOCKER: &str = "registry-1.docker.io\nauth.docker.io\nproduction.cloudflare.docker.com\n\\.cloudfront\\.net$\n\\.r2\\.cloudflarestorage\\.com$\n";

fn kennel(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kennel"))
        .args(args)
        .current_dir(dir)
        .env_remove("UPSTREAM_SOCKS5")
        .env_remove("UPSTREAM_HTTP")
        .env_remove("UPSTREAM_PROXY")
        .env_remove("NO_UPSTREAM")
        .env_remove("UPSTREAM_PROXY_TYPE")
        .env_remove("UPSTREAM_PROXY_HOST")
        .env_remove("UPSTREAM_PROXY_PORT")
        .env_remove("USER_WHITELIST_DOMAINS")
        .output()
        .expect("run kennel")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn check_embedded_default_without_targets() {
    let d = tmp();
    let o = kennel(&["policy", "check"], d.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("ok embedded default policy: 51 allow patterns, 0 deny patterns"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn check_embedded_default_targets() {
    let d = tmp();
    let o = kennel(
        &[
            "policy",
            "check",
            "github.com",
            "api.github.com:443",
            "github.com.evil.net",
            "evilgithub.com:443",
            "github.com:22",
            "http://github.com@evil.net/",
            "2130706433:80",
            "GITHUB.COM.:443",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "allow github.com:443 (rule <embedded>/default-whitelist.txt:4)\n\
         allow api.github.com:443 (rule <embedded>/default-whitelist.txt:4)\n\
         deny github.com.evil.net:443 (not in allowlist)\n\
         deny evilgithub.com:443 (not in allowlist)\n\
         deny github.com:22 (port not allowed; rule <embedded>/default-whitelist.txt:4 allows other ports)\n\
         deny http://github.com@evil.net/ (invalid target: userinfo (`user@host`) is not allowed in a target)\n\
         deny 127.0.0.1:80 (IP address not allowed)\n\
         allow github.com:443 (rule <embedded>/default-whitelist.txt:4)\n"
    );
}

#[test]
fn check_all_allowed_exits_zero() {
    let d = tmp();
    let o = kennel(
        &[
            "policy",
            "check",
            "pypi.org",
            "files.pythonhosted.org:443",
            "https://index.crates.io/config.json",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(
        stdout(&o)
            .lines()
            .filter(|l| l.starts_with("allow "))
            .count(),
        3
    );
}

#[test]
fn check_seed_default_whitelist_copy() {
    let d = tmp();
    std::fs::write(d.path().join("default-whitelist.txt"), SEED_DEFAULT).unwrap();
    let o = kennel(
        &[
            "policy",
            "check",
            "default-whitelist.txt",
            "api.github.com",
            "generativelanguage.googleapis.com",
            "storage.googleapis.com",
            "a.b.jetbrains.com:80",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        stdout(&o),
        "allow api.github.com:443 (rule default-whitelist.txt:4)\n\
         allow generativelanguage.googleapis.com:443 (rule default-whitelist.txt:40)\n\
         allow storage.googleapis.com:443 (rule default-whitelist.txt:44)\n\
         allow a.b.jetbrains.com:80 (rule default-whitelist.txt:33)\n"
    );
    let o = kennel(
        &[
            "policy",
            "check",
            "default-whitelist.txt",
            "github.com.evil.net",
            "evilgithub.com",
            "github.com:8443",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o)
            .lines()
            .filter(|l| l.starts_with("deny "))
            .count(),
        3
    );
}

#[test]
fn check_seed_project_and_docker_lists() {
    let d = tmp();
    std::fs::write(d.path().join("whitelist.txt"), SEED_PROJECT).unwrap();
    std::fs::write(d.path().join("docker-whitelist.txt"), SEED_DOCKER).unwrap();
    let o = kennel(
        &[
            "policy",
            "check",
            "whitelist.txt",
            "cdn-lfs.huggingface.co",
            "x.huggingface.co",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        stdout(&o),
        "allow cdn-lfs.huggingface.co:443 (rule whitelist.txt:3)\nallow x.huggingface.co:443 (rule whitelist.txt:2)\n"
    );
    let o = kennel(
        &[
            "policy",
            "check",
            "docker-whitelist.txt",
            "d3abc.cloudfront.net",
            "registry-1.docker.io",
            "cloudfront.net",
            "evilcloudfront.net",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "allow d3abc.cloudfront.net:443 (rule docker-whitelist.txt:4)\n\
         allow registry-1.docker.io:443 (rule docker-whitelist.txt:1)\n\
         deny cloudfront.net:443 (not in allowlist)\n\
         deny evilcloudfront.net:443 (not in allowlist)\n"
    );
}

#[test]
fn check_toml_policy_with_includes_rules_and_deny() {
    let d = tmp();
    std::fs::write(d.path().join("default-whitelist.txt"), SEED_DEFAULT).unwrap();
    std::fs::write(
        d.path().join("policy.toml"),
        "include = [{ path = \"default-whitelist.txt\", format = \"seed\" }]\n[deny]\nhosts = [\"gist.github.com\"]\n[[rule]]\nhosts = [\"registry.internal\"]\nports = [5000]\n",
    )
    .unwrap();
    let o = kennel(
        &[
            "policy",
            "check",
            "policy.toml",
            "gist.github.com",
            "registry.internal:5000",
            "registry.internal:443",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "deny gist.github.com:443 (denied by rule policy.toml:3)\n\
         allow registry.internal:5000 (rule policy.toml:5)\n\
         deny registry.internal:443 (port not allowed; rule policy.toml:5 allows other ports)\n"
    );
}

#[test]
fn check_invalid_policy_exits_2_with_location() {
    let d = tmp();
    std::fs::write(
        d.path().join("policy.toml"),
        "[allow]\nhosts = [\"ok.com\", \"bad..com\"]\n",
    )
    .unwrap();
    let o = kennel(&["policy", "check", "policy.toml", "ok.com"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "policy.toml:2:25: host pattern \"bad..com\" has an empty label; expected labels separated by single dots\n"
    );
    assert_eq!(stdout(&o), "");
    std::fs::write(
        d.path().join("whitelist.txt"),
        "github.com\n^(a|b)\\.com$\n",
    )
    .unwrap();
    let o = kennel(&["policy", "check", "whitelist.txt"], d.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("whitelist.txt:2:1: regular expression \"^(a|b)\\\\.com$\" is not supported in a seed list"), "{}", stderr(&o));
}

#[test]
fn check_json() {
    let d = tmp();
    let o = kennel(
        &[
            "policy",
            "check",
            "--json",
            "github.com",
            "x.example:80",
            "user@x:1",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    // `decision`, as in the access log; `verdict` is its old name, kept for one release.
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[2]["decision"], "deny", "{}", lines[2]);
    for l in &lines {
        assert_eq!(l["verdict"], l["decision"], "{l}");
    }
    assert_eq!(lines[0]["verdict"], "allow");
    assert_eq!(lines[0]["reason"], "allowed_by_rule");
    assert_eq!(lines[0]["rule"], "<embedded>/default-whitelist.txt:4");
    assert_eq!(lines[0]["pattern"], ".github.com");
    assert_eq!(lines[0]["target"], "github.com:443");
    assert_eq!(lines[0]["upstream"], "direct");
    assert_eq!(lines[1]["verdict"], "deny");
    assert_eq!(lines[1]["reason"], "not_in_allowlist");
    assert_eq!(lines[1]["rule"], serde_json::Value::Null);
    assert_eq!(lines[2]["reason"], "invalid_target");
}

#[test]
fn check_report_mode() {
    let d = tmp();
    std::fs::write(
        d.path().join("p.toml"),
        "mode = \"report\"\n[allow]\nhosts = [\"a.example\"]\n",
    )
    .unwrap();
    let o = kennel(
        &["policy", "check", "p.toml", "a.example", "b.example"],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "allow a.example:443 (rule p.toml:3)\nallow b.example:443 (report mode; would deny: not in allowlist)\n"
    );
}

#[test]
fn check_credentials_from_env_are_not_printed() {
    let d = tmp();
    std::fs::write(
        d.path().join("p.toml"),
        "[upstream]\ndefault = \"socks5h://127.0.0.1:1080\"\ndefault_credentials = { env = \"KENNEL_TEST_UPSTREAM_CREDS\" }\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kennel"))
        .args(["policy", "check", "--json", "p.toml", "github.com"])
        .current_dir(d.path())
        .env("KENNEL_TEST_UPSTREAM_CREDS", "alice:s3cr3t")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stdout(&o).contains("s3cr3t"));
    assert!(
        stdout(&o).contains("\"upstream\":\"socks5h://127.0.0.1:1080\""),
        "{}",
        stdout(&o)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_kennel"))
        .args(["policy", "check", "p.toml"])
        .current_dir(d.path())
        .env("KENNEL_TEST_UPSTREAM_CREDS", "no-colon")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "p.toml:3:23: credentials variable KENNEL_TEST_UPSTREAM_CREDS does not hold user:password\n"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_kennel"))
        .args(["policy", "check", "p.toml"])
        .current_dir(d.path())
        .env_remove("KENNEL_TEST_UPSTREAM_CREDS")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "p.toml:3:23: credentials variable KENNEL_TEST_UPSTREAM_CREDS is not set; expected it to hold user:password\n"
    );
}

#[test]
fn check_dotenv_legacy_variables() {
    let d = tmp();
    std::fs::write(
        d.path().join(".env"),
        "UPSTREAM_SOCKS5=host.docker.internal:8900\nNO_UPSTREAM=corp.example\nUSER_WHITELIST_DOMAINS=example.org\n",
    )
    .unwrap();
    let o = kennel(
        &[
            "policy",
            "check",
            "--dotenv",
            ".env",
            "--json",
            "www.example.org",
            "git.corp.example",
        ],
        d.path(),
    );
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["verdict"], "allow");
    assert_eq!(lines[0]["rule"], "$USER_WHITELIST_DOMAINS:1");
    assert_eq!(lines[0]["upstream"], "socks5h://host.docker.internal:8900");
    assert_eq!(lines[1]["upstream"], "direct");
    assert_eq!(o.status.code(), Some(1));
}

/// Issue 9 item 8: `UPSTREAM_SOCKS5` and `UPSTREAM_HTTP` both set was refused; the replaced
/// system used SOCKS5, and the warning names the file and line.
#[test]
fn check_dotenv_with_socks5_and_http_uses_socks5_and_warns_with_file_and_line() {
    let d = tmp();
    std::fs::write(
        d.path().join(".env"),
        "UPSTREAM_SOCKS5=host.docker.internal:8900\nUPSTREAM_HTTP=host.docker.internal:3128\n",
    )
    .unwrap();
    let o = kennel(&["policy", "check", "--dotenv", ".env"], d.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("default upstream socks5h://host.docker.internal:8900"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).starts_with(
            ".env:2: warning: UPSTREAM_HTTP is ignored because UPSTREAM_SOCKS5 (.env:1) is also set"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn migrate_tinyproxy_filter() {
    let d = tmp();
    std::fs::write(
        d.path().join("filter"),
        "# docker proxy filter\ngithub.com\n\\.cloudfront\\.net$\n^(a|b)\\.example\\.com$\n^exact\\.example$\n",
    )
    .unwrap();
    let o = kennel(&["policy", "migrate", "filter"], d.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    let patterns: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        patterns,
        [".github.com", "*.cloudfront.net", "exact.example"]
    );
    assert!(
        out.contains(
            "#   line 4: ^(a|b)\\.example\\.com$  -- groups `( )` have no host-pattern equivalent"
        ),
        "{out}"
    );
    assert!(
        out.contains("#   line 2 github.com -> .github.com: evilgithub.com allowed -> denied"),
        "{out}"
    );
    assert!(
        out.contains("#   line 2 github.com -> .github.com: github.com.evil.net allowed -> denied"),
        "{out}"
    );
    assert!(out.contains("#   line 2 github.com -> .github.com: githubxcom allowed -> denied  (an unescaped `.` in the old regex \"github.com\" matched any character"), "{out}");
    assert!(
        out.contains("CONNECT to any port (e.g. github.com:22) was allowed"),
        "{out}"
    );
    // The output is a valid native list.
    std::fs::write(d.path().join("native.txt"), &out).unwrap();
    let o = kennel(
        &[
            "policy",
            "check",
            "--format",
            "list",
            "native.txt",
            "api.github.com",
            "evilgithub.com",
        ],
        d.path(),
    );
    assert_eq!(
        stdout(&o),
        "allow api.github.com:443 (rule native.txt:2)\ndeny evilgithub.com:443 (not in allowlist)\n"
    );
}

/// Issue 9 item 9: the old `FilterURLs On` line was untranslatable, and the report implied
/// every `.` matched any character; it now says so per line, for unescaped dots only.
#[test]
fn migrate_translates_the_url_filter_line_and_notes_unescaped_dots_per_line() {
    let d = tmp();
    std::fs::write(
        d.path().join("filter"),
        "://\\(.*\\.\\)?gitlab\\.com\\(/\\|$\\)\n://(.*\\.)?gitlab\\.com(/|$)\n\\.cloudfront\\.net$\napi.github\\.com\n",
    )
    .unwrap();
    let o = kennel(&["policy", "migrate", "filter"], d.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let patterns: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        patterns,
        [
            ".gitlab.com",
            ".gitlab.com",
            "*.cloudfront.net",
            ".api.github.com"
        ]
    );
    assert!(!out.contains("NOT TRANSLATED"), "{out}");
    assert!(
        out.contains("#   line 4 api.github\\.com: the unescaped `.` at column 4 matched any character (e.g. apixgithub.com)"),
        "{out}"
    );
    assert!(
        !out.contains("#   line 3 \\.cloudfront\\.net$: the unescaped"),
        "escaped dots reported as any-character: {out}"
    );
    assert!(
        out.contains("#   line 1 ://\\(.*\\.\\)?gitlab\\.com\\(/\\|$\\): in basic regex syntax (Tinyproxy's default, FilterExtended Off) `?` is a literal character"),
        "{out}"
    );
    assert!(
        out.contains("#   line 2 ://(.*\\.)?gitlab\\.com(/|$) -> .gitlab.com: http://evil.example/x.gitlab.com/ allowed -> denied"),
        "{out}"
    );
}

#[test]
fn migrate_seed_list_fully_translates() {
    let d = tmp();
    std::fs::write(d.path().join("whitelist.txt"), SEED_DEFAULT).unwrap();
    let o = kennel(&["policy", "migrate", "whitelist.txt"], d.path());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 51);
    assert!(!out.contains("NOT TRANSLATED"));
}
