//! Legacy `.env` variables.

use kennel_policy::{Host, LegacyEnv, Policy, Target};

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
            LegacyEnv {
                upstream_proxy: Some("socks5://127.0.0.1:1080".into()),
                ..LegacyEnv::default()
            },
            "socks5://127.0.0.1:1080",
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
        env,
        LegacyEnv {
            upstream_socks5: Some("host.docker.internal:8900".into()),
            upstream_http: Some(String::new()),
            upstream_proxy: None,
            no_upstream: Some("a.com,b.com".into()),
            user_whitelist_domains: Some("x.io".into()),
        }
    );
    // The empty UPSTREAM_HTTP counts as unset: no conflict.
    let pol = Policy::embedded_default_with(&env).unwrap();
    assert_eq!(
        up(&pol, "github.com"),
        "socks5h://host.docker.internal:8900"
    );
}
