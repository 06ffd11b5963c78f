//! Upstream parsing, route selection and credential redaction.

use kennel_policy::{Credentials, Host, Upstream};

use super::support::Dir;

fn name(s: &str) -> Host {
    Host::parse(s).unwrap()
}

#[test]
fn routes_first_match_else_default() {
    let d = Dir::new();
    d.write("corp-creds.txt", "alice:pa:ss\n");
    d.write(
        "policy.toml",
        r#"[upstream]
default = "socks5h://user:hunter2@127.0.0.1:1080"
[[upstream.route]]
hosts = [".corp.example"]
via = "http://proxy.corp:3128"
credentials = { file = "corp-creds.txt" }
[[upstream.route]]
hosts = ["a.corp.example", "*.lab.example"]
via = "socks5://[::1]:1081"
[[upstream.route]]
cidrs = ["10.0.0.0/8"]
via = "https://tls-proxy.example:8443"
[[upstream.route]]
hosts = ["direct.example"]
via = "direct"
"#,
    );
    let p = d.load("policy.toml");
    let table: &[(&str, &str)] = &[
        ("github.com", "socks5h://127.0.0.1:1080"),
        ("corp.example", "http://proxy.corp:3128"),
        ("a.corp.example", "http://proxy.corp:3128"),
        ("x.lab.example", "socks5://[::1]:1081"),
        ("lab.example", "socks5h://127.0.0.1:1080"),
        ("10.1.2.3", "https://tls-proxy.example:8443"),
        ("11.1.2.3", "socks5h://127.0.0.1:1080"),
        ("DIRECT.example.", "direct"),
    ];
    for (h, want) in table {
        assert_eq!(p.upstream_for(&name(h)).to_string(), *want, "{h}");
    }
    assert_eq!(
        p.upstream_for(&name("x.corp.example")),
        &Upstream::Http {
            host: "proxy.corp".into(),
            port: 3128,
            credentials: Some(Credentials {
                username: "alice".into(),
                password: "pa:ss".into()
            }),
            tls: false
        }
    );
    match p.default_upstream() {
        Upstream::Socks5 {
            credentials: Some(c),
            remote_dns: true,
            ..
        } => assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "hunter2")
        ),
        other => panic!("{other:?}"),
    }
    let dbg = format!(
        "{:?} {} {:?}",
        p.default_upstream(),
        p.default_upstream(),
        p
    );
    assert!(!dbg.contains("hunter2") && !dbg.contains("pa:ss"), "{dbg}");
    assert_eq!(p.stats().routes, 4);
    assert!(
        p.source_files()
            .iter()
            .any(|f| f.ends_with("corp-creds.txt"))
    );
}

#[test]
fn credentials_display_redacts() {
    let c = Credentials {
        username: "u".into(),
        password: "topsecret".into(),
    };
    assert_eq!(c.to_string(), "u:<redacted>");
    assert!(!format!("{c:?}").contains("topsecret"));
}

#[test]
fn percent_encoded_url_credentials() {
    let d = Dir::new();
    d.write(
        "policy.toml",
        "[upstream]\ndefault = \"http://us%40er:p%3Aw@proxy:8080/\"\n",
    );
    let p = d.load("policy.toml");
    let c = p.default_upstream().credentials().unwrap();
    assert_eq!((c.username.as_str(), c.password.as_str()), ("us@er", "p:w"));
    assert_eq!(p.default_upstream().to_string(), "http://proxy:8080");
}
