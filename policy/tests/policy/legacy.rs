//! Legacy `.env` variables.

use kennel_policy::{Host, LegacyEnv, LegacySettings, Policy, Target};

use super::support::Dir;

fn up(p: &Policy, h: &str) -> String {
    p.upstream_for(&Host::parse(h).unwrap()).to_string()
}

#[test]
fn upstream_variables_set_default() {
    let cases: &[(LegacyEnv, &str)] = &[
        (
            LegacyEnv {
                upstream_socks5: Some("host.docker.internal:8900".into()),
                ..LegacyEnv::default()
            },
            "socks5h://host.docker.internal:8900",
        ),
        (
            LegacyEnv {
                upstream_http: Some("host.docker.internal:3128".into()),
                ..LegacyEnv::default()
            },
            "http://host.docker.internal:3128",
        ),
        (
            // socks5:// in the old system's variables meant names resolved at the far end.
            LegacyEnv {
                upstream_proxy: Some("socks5://127.0.0.1:1080".into()),
                ..LegacyEnv::default()
            },
            "socks5h://127.0.0.1:1080",
        ),
        (
            LegacyEnv {
                upstream_proxy: Some("http://127.0.0.1:3128".into()),
                ..LegacyEnv::default()
            },
            "http://127.0.0.1:3128",
        ),
        (
            LegacyEnv {
                upstream_socks5: Some("  ".into()),
                ..LegacyEnv::default()
            },
            "direct",
        ),
    ];
    for (env, want) in cases {
        let p = Policy::embedded_default_with(env).unwrap();
        assert_eq!(up(&p, "github.com"), *want, "{env:?}");
    }
}

#[test]
fn config_default_wins_over_legacy() {
    let d = Dir::new();
    let path = d.write("policy.toml", "[upstream]\ndefault = \"http://cfg:3128\"\n");
    let legacy = LegacyEnv {
        upstream_socks5: Some("legacy:1080".into()),
        ..LegacyEnv::default()
    };
    let p = Policy::load_with(&path, &legacy).unwrap();
    assert_eq!(up(&p, "a.com"), "http://cfg:3128");
    let path = d.write("policy.toml", "[allow]\nhosts = [\"a.com\"]\n");
    let p = Policy::load_with(&path, &legacy).unwrap();
    assert_eq!(up(&p, "a.com"), "socks5h://legacy:1080");
}

#[test]
fn no_upstream_routes_direct_with_seed_meaning() {
    let legacy = LegacyEnv {
        upstream_socks5: Some("127.0.0.1:1080".into()),
        no_upstream: Some("corp.example, intranet.lan  other.example".into()),
        ..LegacyEnv::default()
    };
    let p = Policy::embedded_default_with(&legacy).unwrap();
    assert_eq!(up(&p, "corp.example"), "direct");
    assert_eq!(up(&p, "git.corp.example"), "direct");
    assert_eq!(up(&p, "intranet.lan"), "direct");
    assert_eq!(up(&p, "other.example"), "direct");
    assert_eq!(up(&p, "evilcorp.example"), "socks5h://127.0.0.1:1080");
    assert_eq!(up(&p, "github.com"), "socks5h://127.0.0.1:1080");
}

#[test]
fn user_whitelist_domains_adds_seed_entries() {
    let legacy = LegacyEnv {
        user_whitelist_domains: Some("example.org,foo.dev bar.io".into()),
        ..LegacyEnv::default()
    };
    let p = Policy::embedded_default_with(&legacy).unwrap();
    for t in [
        "example.org:443",
        "www.example.org:443",
        "foo.dev:80",
        "a.bar.io:443",
    ] {
        let d = p.decide(&Target::parse_authority(t).unwrap());
        assert!(d.is_allowed(), "{t}");
    }
    let d = p.decide(&Target::parse_authority("a.bar.io:443").unwrap());
    assert_eq!(d.rule.unwrap().to_string(), "$USER_WHITELIST_DOMAINS:1");
    assert!(
        !p.decide(&Target::parse_authority("evilexample.org:443").unwrap())
            .is_allowed()
    );
    assert_ne!(p.version_hash(), Policy::embedded_default().version_hash());
}

#[test]
fn dotenv_file() {
    let d = Dir::new();
    let p = d.write(
        ".env",
        "# proxy\nexport UPSTREAM_SOCKS5=\"host.docker.internal:8900\"\nNO_UPSTREAM='a.com,b.com'\nUSER_WHITELIST_DOMAINS=x.io # comment\nOTHER=ignored\nUPSTREAM_HTTP=\n",
    );
    let env = LegacyEnv::from_dotenv(&p).unwrap();
    assert_eq!(
        (
            env.upstream_socks5.as_deref(),
            env.upstream_http.as_deref(),
            env.upstream_proxy.as_deref(),
            env.no_upstream.as_deref(),
            env.user_whitelist_domains.as_deref(),
        ),
        (
            Some("host.docker.internal:8900"),
            Some(""),
            None,
            Some("a.com,b.com"),
            Some("x.io"),
        )
    );
    // Where each value was written: line, and the column its value starts (after the quote).
    let o = &env.origins["UPSTREAM_SOCKS5"];
    assert_eq!((o.file.as_path(), o.line, o.col), (p.as_path(), 2, 25));
    assert_eq!(env.origins["USER_WHITELIST_DOMAINS"].line, 4);
    // The empty UPSTREAM_HTTP counts as unset: no conflict.
    let pol = Policy::embedded_default_with(&env).unwrap();
    assert_eq!(
        up(&pol, "github.com"),
        "socks5h://host.docker.internal:8900"
    );
}

fn resolve_dotenv(d: &Dir, text: &str) -> (std::path::PathBuf, Result<LegacySettings, String>) {
    let p = d.write(".env", text);
    let r = LegacyEnv::from_dotenv(&p)
        .and_then(|e| e.resolve())
        .map_err(|e| d.strip(&e.to_string()));
    (p, r)
}

/// Issue 9 item 8: with both `UPSTREAM_SOCKS5` and `UPSTREAM_HTTP` set, the old system used
/// SOCKS5; kennel refused the environment.
#[test]
fn socks5_and_http_both_set_uses_socks5_with_a_warning_naming_file_and_line() {
    let d = Dir::new();
    let (p, r) = resolve_dotenv(
        &d,
        "UPSTREAM_HTTP=host.docker.internal:3128\nUPSTREAM_SOCKS5=host.docker.internal:8900\n",
    );
    let s = r.unwrap();
    assert_eq!(
        s.upstream
            .as_ref()
            .map(|u| u.upstream.to_string())
            .as_deref(),
        Some("socks5h://host.docker.internal:8900")
    );
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert_eq!(
        d.strip(&s.warnings[0]),
        ".env:1: warning: UPSTREAM_HTTP is ignored because UPSTREAM_SOCKS5 (.env:2) is also set; the replaced system used SOCKS5 then, and so does kennel. Remove one of the two"
    );
    let env = LegacyEnv::from_dotenv(&p).unwrap();
    let pol = Policy::embedded_default_with(&env).unwrap();
    assert_eq!(
        up(&pol, "github.com"),
        "socks5h://host.docker.internal:8900"
    );
}

/// Issue 9 item 8: the old `.env.example` spelled the upstream as three variables.
#[test]
fn old_env_example_proxy_type_host_port_form_is_honoured() {
    let d = Dir::new();
    let cases: &[(&str, &str)] = &[
        (
            "UPSTREAM_PROXY_TYPE=socks5\nUPSTREAM_PROXY_HOST=host.docker.internal\nUPSTREAM_PROXY_PORT=8900\n",
            "socks5h://host.docker.internal:8900",
        ),
        (
            "UPSTREAM_PROXY_TYPE=HTTP\nUPSTREAM_PROXY_HOST=10.0.0.1\nUPSTREAM_PROXY_PORT=3128\n",
            "http://10.0.0.1:3128",
        ),
        (
            "UPSTREAM_PROXY_TYPE=socks5\nUPSTREAM_PROXY_HOST=::1\nUPSTREAM_PROXY_PORT=1080\n",
            "socks5h://[::1]:1080",
        ),
        // As shipped in .env.example: a type and port, no host = no upstream.
        (
            "UPSTREAM_PROXY_TYPE=socks5\nUPSTREAM_PROXY_HOST=\nUPSTREAM_PROXY_PORT=8900\n",
            "direct",
        ),
    ];
    for (text, want) in cases {
        let p = d.write(".env", text);
        let env = LegacyEnv::from_dotenv(&p).unwrap();
        let pol = Policy::embedded_default_with(&env).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(up(&pol, "github.com"), *want, "{text}");
    }
}

/// Issue 9 item 8: `UPSTREAM_PROXY=socks5://…` in a seed `.env` meant what Tinyproxy did with
/// it: names resolved by the upstream.
#[test]
fn upstream_proxy_socks5_in_a_seed_env_resolves_names_at_the_far_end() {
    let d = Dir::new();
    let (_, r) = resolve_dotenv(&d, "UPSTREAM_PROXY=socks5://host.docker.internal:8900\n");
    let s = r.unwrap();
    let u = s.upstream.unwrap();
    assert_eq!(
        u.upstream.to_string(),
        "socks5h://host.docker.internal:8900"
    );
    assert_eq!(u.url, "socks5h://host.docker.internal:8900");
    assert!(
        d.strip(&s.applied[0].to_string())
            .starts_with("UPSTREAM_PROXY (.env:1): default upstream socks5h://host.docker.internal:8900 (socks5:// in the replaced system's variables meant names resolved by the upstream"),
        "{}",
        s.applied[0]
    );
}

/// Issue 9 item 8: every `.env` error names the file and line (and the column in the value).
#[test]
fn every_dotenv_error_names_file_line_and_column() {
    let d = Dir::new();
    let cases: &[(&str, &str)] = &[
        ("# c\n  garbage\n", ".env:2:3: line is not KEY=VALUE"),
        (
            "\nUPSTREAM_SOCKS5=nohost\n",
            ".env:2:17: upstream \"socks5h://nohost\" has no port",
        ),
        (
            "UPSTREAM_SOCKS5=http://h:1\n",
            ".env:1:17: UPSTREAM_SOCKS5 is a http:// URL; expected host:port",
        ),
        (
            "UPSTREAM_HTTP='h:0'\n",
            ".env:1:16: upstream \"http://h:0\" has an invalid port",
        ),
        (
            "X=1\nNO_UPSTREAM=\"ok.com, bad..com\"\n",
            ".env:2:26: host pattern \"bad..com\" has an empty label",
        ),
        (
            "USER_WHITELIST_DOMAINS=a.com,^b\\.com$\n",
            ".env:1:30: regular expression",
        ),
        (
            "UPSTREAM_PROXY_TYPE=socks4\nUPSTREAM_PROXY_HOST=h\nUPSTREAM_PROXY_PORT=1\n",
            ".env:1:21: UPSTREAM_PROXY_TYPE \"socks4\" is not supported; expected socks5, http or https",
        ),
        (
            "UPSTREAM_PROXY_TYPE=http\nUPSTREAM_PROXY_HOST=h\nUPSTREAM_PROXY_PORT=99999\n",
            ".env:3:21: UPSTREAM_PROXY_PORT \"99999\" is not a port; expected 1-65535",
        ),
        (
            "UPSTREAM_PROXY_HOST=h\nUPSTREAM_PROXY_PORT=1\n",
            ".env:1:21: UPSTREAM_PROXY_HOST is set but UPSTREAM_PROXY_TYPE is not",
        ),
        (
            "UPSTREAM_PROXY_TYPE=http\nUPSTREAM_PROXY_HOST=h\n",
            ".env:2:21: UPSTREAM_PROXY_HOST is set but UPSTREAM_PROXY_PORT is not",
        ),
        (
            "UPSTREAM_PROXY_TYPE=http\nUPSTREAM_PROXY_HOST=h\nUPSTREAM_PROXY_PORT=1\nUPSTREAM_HTTP=x:2\n",
            ".env:4:15: UPSTREAM_HTTP and UPSTREAM_PROXY_TYPE/HOST/PORT (.env:2) both choose the default upstream",
        ),
    ];
    for (text, want) in cases {
        let (_, r) = resolve_dotenv(&d, text);
        let got = r.err().unwrap_or_else(|| panic!("no error for {text:?}"));
        assert!(
            got.starts_with(want),
            "{text:?}\ngot:  {got}\nwant: {want}…"
        );
    }
}

/// The process environment is read through a lookup, like a dotenv file but without origins.
#[test]
fn lookup_reads_all_legacy_variables() {
    let vars = [
        ("UPSTREAM_PROXY_TYPE", "socks5"),
        ("UPSTREAM_PROXY_HOST", "up.example"),
        ("UPSTREAM_PROXY_PORT", "1080"),
        ("UNRELATED", "x"),
    ];
    let env = LegacyEnv::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_string())
    });
    let s = env.resolve().unwrap();
    let applied: Vec<String> = s.applied.iter().map(ToString::to_string).collect();
    assert_eq!(
        applied,
        [
            "UPSTREAM_PROXY_TYPE (environment): default upstream socks5h://up.example:1080",
            "UPSTREAM_PROXY_HOST (environment): default upstream socks5h://up.example:1080",
            "UPSTREAM_PROXY_PORT (environment): default upstream socks5h://up.example:1080",
        ]
    );
}
