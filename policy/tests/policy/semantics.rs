//! Table-driven tests of every matching rule.

use std::net::IpAddr;

use kennel_policy::{Host, Policy, Reason, Target, TargetError, Verdict};

use super::support::{Dir, decide};

const POLICY: &str = r#"mode = "enforce"
include = [{ path = "seed.txt", format = "seed" }, "native.txt"]
[defaults]
ports = [80, 443]
[allow]
hosts = ["github.com", ".githubusercontent.com", "*.npmjs.org", "bücher.example", "xn--caf-dma.example", "Upper.Example."]
cidrs = ["10.1.0.0/16", "fd00:1::/32"]
[deny]
hosts = ["gist.github.com", "*.evil.githubusercontent.com"]
cidrs = ["10.1.2.0/24"]
[[rule]]
hosts = ["internal-registry.example"]
ports = [5000]
[[rule]]
hosts = ["github.com"]
ports = [22]
"#;

const SEED: &str = "# seed list\ngoogleapis.com\n\\.cloudfront\\.net$\n";
const NATIVE: &str = "exact.example\n  .both.example  \n*.subs.example\n";

fn fixture(mode: &str) -> (Dir, Policy) {
    let d = Dir::new();
    d.write("seed.txt", SEED);
    d.write("native.txt", NATIVE);
    d.write("policy.toml", &POLICY.replace("enforce", mode));
    let p = d.load("policy.toml");
    (d, p)
}

#[test]
fn decisions_table() {
    let (_d, p) = fixture("enforce");
    use Reason::*;
    // (target, reason, rule "file:line" or "")
    let table: &[(&str, Reason, &str)] = &[
        ("github.com:443", AllowedByRule, "policy.toml:6"),
        ("GITHUB.COM.:443", AllowedByRule, "policy.toml:6"),
        ("GitHub.Com:80", AllowedByRule, "policy.toml:6"),
        ("api.github.com:443", NotInAllowlist, ""),
        ("github.com.evil.com:443", NotInAllowlist, ""),
        ("evilgithub.com:443", NotInAllowlist, ""),
        ("github.com:8080", PortNotAllowed, "policy.toml:6"),
        ("github.com:22", AllowedByRule, "policy.toml:15"),
        ("gist.github.com:443", DeniedByRule, "policy.toml:9"),
        (
            "raw.githubusercontent.com:443",
            AllowedByRule,
            "policy.toml:6",
        ),
        ("githubusercontent.com:443", AllowedByRule, "policy.toml:6"),
        (
            "evil.githubusercontent.com:443",
            AllowedByRule,
            "policy.toml:6",
        ),
        (
            "x.evil.githubusercontent.com:443",
            DeniedByRule,
            "policy.toml:9",
        ),
        ("registry.npmjs.org:443", AllowedByRule, "policy.toml:6"),
        ("a.b.npmjs.org:443", AllowedByRule, "policy.toml:6"),
        ("npmjs.org:443", NotInAllowlist, ""),
        ("xnpmjs.org:443", NotInAllowlist, ""),
        (
            "internal-registry.example:5000",
            AllowedByRule,
            "policy.toml:12",
        ),
        (
            "internal-registry.example:443",
            PortNotAllowed,
            "policy.toml:12",
        ),
        ("xn--bcher-kva.example:443", AllowedByRule, "policy.toml:6"),
        ("BÜCHER.example:443", AllowedByRule, "policy.toml:6"),
        ("café.example:443", AllowedByRule, "policy.toml:6"),
        ("xn--caf-dma.example:443", AllowedByRule, "policy.toml:6"),
        ("cafe.example:443", NotInAllowlist, ""),
        ("upper.example:443", AllowedByRule, "policy.toml:6"),
        ("googleapis.com:443", AllowedByRule, "seed.txt:2"),
        ("storage.googleapis.com:443", AllowedByRule, "seed.txt:2"),
        ("googleapis.com.evil.net:443", NotInAllowlist, ""),
        ("evilgoogleapis.com:443", NotInAllowlist, ""),
        ("d111.cloudfront.net:443", AllowedByRule, "seed.txt:3"),
        ("cloudfront.net:443", NotInAllowlist, ""),
        ("exact.example:443", AllowedByRule, "native.txt:1"),
        ("www.exact.example:443", NotInAllowlist, ""),
        ("both.example:443", AllowedByRule, "native.txt:2"),
        ("x.y.both.example:80", AllowedByRule, "native.txt:2"),
        ("subs.example:443", NotInAllowlist, ""),
        ("a.subs.example:443", AllowedByRule, "native.txt:3"),
        ("10.1.0.5:443", AllowedByCidr, "policy.toml:7"),
        ("10.1.0.5:22", PortNotAllowed, "policy.toml:7"),
        ("10.1.2.3:443", DeniedByRule, "policy.toml:10"),
        ("10.2.0.1:443", IpLiteralNotAllowed, ""),
        ("127.0.0.1:443", IpLiteralNotAllowed, ""),
        ("2130706433:443", IpLiteralNotAllowed, ""),
        ("0x0a.1.0.5:443", AllowedByCidr, "policy.toml:7"),
        ("012.1.0.5:443", AllowedByCidr, "policy.toml:7"),
        ("167837701:443", AllowedByCidr, "policy.toml:7"),
        ("[fd00:1::5]:443", AllowedByCidr, "policy.toml:7"),
        ("[::ffff:10.1.0.5]:443", AllowedByCidr, "policy.toml:7"),
        ("[::ffff:127.0.0.1]:443", IpLiteralNotAllowed, ""),
    ];
    for (t, reason, rule) in table {
        let d = decide(&p, t);
        assert_eq!(d.reason, *reason, "{t}: {d:?}");
        let allowed = matches!(reason, AllowedByRule | AllowedByCidr);
        assert_eq!(d.is_allowed(), allowed, "{t}");
        assert!(!d.would_deny, "{t}");
        let shown = d
            .rule
            .as_ref()
            .map(|r| {
                r.to_string()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default();
        assert_eq!(shown, *rule, "{t}: {d:?}");
    }
}

#[test]
fn report_mode_allows_and_keeps_reason() {
    let (_d, p) = fixture("report");
    assert_eq!(p.mode(), kennel_policy::Mode::Report);
    for (t, reason) in [
        ("evilgithub.com:443", Reason::NotInAllowlist),
        ("gist.github.com:443", Reason::DeniedByRule),
        ("github.com:8080", Reason::PortNotAllowed),
        ("127.0.0.1:80", Reason::IpLiteralNotAllowed),
    ] {
        let d = decide(&p, t);
        assert_eq!(d.verdict, Verdict::Allow, "{t}");
        assert!(d.would_deny, "{t}");
        assert_eq!(d.reason, reason, "{t}");
    }
    let d = decide(&p, "github.com:443");
    assert!(d.is_allowed() && !d.would_deny);
    assert_eq!(d.reason, Reason::AllowedByRule);
}

#[test]
fn rule_ref_names_pattern() {
    let (_d, p) = fixture("enforce");
    let d = decide(&p, "storage.googleapis.com:443");
    assert_eq!(&*d.rule.unwrap().pattern, ".googleapis.com");
    let d = decide(&p, "d1.cloudfront.net:443");
    assert_eq!(&*d.rule.unwrap().pattern, "*.cloudfront.net");
    let d = decide(&p, "café.example:443");
    assert_eq!(&*d.rule.unwrap().pattern, "xn--caf-dma.example");
}

#[test]
fn cidr_allowing_for_guard() {
    let (_d, p) = fixture("enforce");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        &*p.cidr_allowing(ip("10.1.9.9")).unwrap().pattern,
        "10.1.0.0/16"
    );
    assert!(p.cidr_allowing(ip("10.1.2.9")).is_none(), "deny cidr wins");
    assert!(p.cidr_allowing(ip("127.0.0.1")).is_none());
    assert!(p.cidr_allowing(ip("::ffff:10.1.9.9")).is_some());
}

#[test]
fn embedded_default_is_the_seed_list_with_subdomains() {
    let p = Policy::embedded_default();
    assert_eq!(p.stats().allow_patterns, 51);
    assert!(p.primary_file().is_none());
    assert!(p.source_files().is_empty());
    for t in [
        "github.com:443",
        "api.github.com:443",
        "storage.googleapis.com:443",
        "index.crates.io:443",
        "pypi.org:80",
        "a.b.jetbrains.com:443",
        "us-docker.pkg.dev:443",
    ] {
        assert!(decide(&p, t).is_allowed(), "{t}");
    }
    for t in [
        "github.com.evil.net:443",
        "evilgithub.com:443",
        "github.com:22",
        "example.com:443",
        "127.0.0.1:443",
        "pkg.dev:443",
    ] {
        assert!(!decide(&p, t).is_allowed(), "{t}");
    }
    let d = decide(&p, "github.com:443");
    assert_eq!(
        d.rule.unwrap().to_string(),
        "<embedded>/default-whitelist.txt:4"
    );
    assert_eq!(
        p.upstream_for(&Host::Name("github.com".into())).to_string(),
        "direct"
    );
    assert_eq!(p.version_hash(), Policy::embedded_default().version_hash());
}

#[test]
fn version_hash_follows_content() {
    let (d, p1) = fixture("enforce");
    let p2 = d.load("policy.toml");
    assert_eq!(p1.version_hash(), p2.version_hash());
    assert_eq!(p1.version_hash().len(), 64);
    d.write("native.txt", "exact.example\n");
    let p3 = d.load("policy.toml");
    assert_ne!(p1.version_hash(), p3.version_hash());
    let names: Vec<String> = p3
        .source_files()
        .iter()
        .map(|p| super::support::file_name(p))
        .collect();
    assert_eq!(names, ["policy.toml", "seed.txt", "native.txt"]);
    let s = p3.stats();
    assert_eq!(
        (s.allow_patterns, s.deny_patterns, s.rules, s.cidrs),
        (11, 2, 2, 3)
    );
}

#[test]
fn target_parsing_table() {
    let ok: &[(&str, &str)] = &[
        ("example.com:443", "example.com:443"),
        ("EXAMPLE.com.:443", "example.com:443"),
        ("[::1]:8080", "[::1]:8080"),
        ("[::ffff:127.0.0.1]:1", "[::ffff:127.0.0.1]:1"),
        ("2130706433:80", "127.0.0.1:80"),
        ("0177.0.0.1:80", "127.0.0.1:80"),
        ("0x7f.1:80", "127.0.0.1:80"),
        ("127.1:80", "127.0.0.1:80"),
        ("bücher.example:443", "xn--bcher-kva.example:443"),
        ("xn--bcher-kva.example:443", "xn--bcher-kva.example:443"),
        ("a_b.example:443", "a_b.example:443"),
        ("１２７.０.０.１:80", "127.0.0.1:80"),
    ];
    for (s, want) in ok {
        assert_eq!(
            Target::parse_authority(s).map(|t| t.to_string()),
            Ok(want.to_string()),
            "{s}"
        );
    }
    let bad: &[(&str, TargetError)] = &[
        ("example.com", TargetError::MissingPort),
        ("example.com:0", TargetError::InvalidPort("0".into())),
        (
            "example.com:65536",
            TargetError::InvalidPort("65536".into()),
        ),
        ("example.com:+443", TargetError::InvalidPort("+443".into())),
        (":443", TargetError::EmptyHost),
        ("user@example.com:443", TargetError::Userinfo),
        ("exa%6dple.com:443", TargetError::PercentEncoded),
        ("exa mple.com:443", TargetError::InvalidChar(' ')),
        ("example.com/x:443", TargetError::InvalidChar('/')),
        ("::1:443", TargetError::MalformedAuthority("::1:443".into())),
        ("[::1:443", TargetError::InvalidIpv6("[::1:443".into())),
        (
            "[fe80::1%eth0]:443",
            TargetError::InvalidIpv6("[fe80::1%eth0]".into()),
        ),
        (
            "1.2.3.4.5:443",
            TargetError::InvalidIpv4("1.2.3.4.5".into()),
        ),
        ("a..b:443", TargetError::InvalidName("a..b".into())),
        (
            "github.com..:443",
            TargetError::InvalidName("github.com..".into()),
        ),
        (
            ".github.com:443",
            TargetError::InvalidName(".github.com".into()),
        ),
        (
            "xn--zz.example:443",
            TargetError::InvalidName("xn--zz.example".into()),
        ),
    ];
    for (s, want) in bad {
        assert_eq!(Target::parse_authority(s).as_ref(), Err(want), "{s}");
    }
    let long = format!("{}.com:443", "a".repeat(64));
    assert!(matches!(
        Target::parse_authority(&long),
        Err(TargetError::InvalidName(_))
    ));
}

#[test]
fn absolute_uri_table() {
    let ok: &[(&str, &str, &str)] = &[
        ("http://example.com", "example.com:80", "/"),
        ("https://example.com", "example.com:443", "/"),
        (
            "HTTP://Example.COM:8080/a/b?c=d#frag",
            "example.com:8080",
            "/a/b?c=d",
        ),
        ("http://example.com?q", "example.com:80", "/?q"),
        ("http://[::1]:81/x", "[::1]:81", "/x"),
        ("http://2130706433/", "127.0.0.1:80", "/"),
        ("http://example.com:/", "example.com:80", "/"),
    ];
    for (s, t, path) in ok {
        let (target, p) = Target::parse_absolute_uri(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            (target.to_string().as_str(), p.as_str()),
            (*t, *path),
            "{s}"
        );
    }
    let bad: &[(&str, TargetError)] = &[
        ("http://github.com@evil.net/", TargetError::Userinfo),
        ("http://user:pw@example.com/", TargetError::Userinfo),
        (
            "ftp://example.com/",
            TargetError::UnsupportedScheme("ftp".into()),
        ),
        ("/relative", TargetError::NotAbsolute),
        ("http:///x", TargetError::EmptyHost),
        (
            "http://example.com#x",
            TargetError::MalformedAuthority("example.com".into()),
        ),
        ("http://example.com\\@evil.net/", TargetError::Userinfo),
        ("http://exa%6dple.com/", TargetError::PercentEncoded),
        (
            "http://example.com:99999/",
            TargetError::InvalidPort("99999".into()),
        ),
    ];
    for (s, want) in bad {
        assert_eq!(
            Target::parse_absolute_uri(s).as_ref().map(|_| ()),
            Err(want),
            "{s}"
        );
    }
}

#[test]
fn host_header_and_sni() {
    assert_eq!(
        Target::from_host_port("Example.COM.", 443)
            .unwrap()
            .to_string(),
        "example.com:443"
    );
    assert_eq!(
        Target::from_host_port("example.com", 0),
        Err(TargetError::InvalidPort("0".into()))
    );
    assert_eq!(
        Host::parse("0x7f.1").unwrap(),
        Host::Ip("127.0.0.1".parse().unwrap())
    );
    assert_eq!(Host::parse("[::1]").unwrap().to_string(), "[::1]");
}

#[test]
fn defaults_ports_apply_to_includes_allow_and_legacy_but_not_rules() {
    let d = Dir::new();
    d.write("list.txt", "listed.example\n");
    let path = d.write(
        "policy.toml",
        "include = [\"list.txt\"]\n[defaults]\nports = [8443, 8443, 443]\n[allow]\nhosts = [\"allowed.example\"]\n[[rule]]\nhosts = [\"ruled.example\"]\nports = [9000]\n",
    );
    let legacy = kennel_policy::LegacyEnv {
        user_whitelist_domains: Some("legacy.example".into()),
        ..kennel_policy::LegacyEnv::default()
    };
    let p = Policy::load_with(&path, &legacy).unwrap();
    for h in ["listed.example", "allowed.example", "legacy.example"] {
        assert!(decide(&p, &format!("{h}:8443")).is_allowed(), "{h}");
        assert!(decide(&p, &format!("{h}:443")).is_allowed(), "{h}");
        assert_eq!(
            decide(&p, &format!("{h}:80")).reason,
            Reason::PortNotAllowed,
            "{h}"
        );
    }
    assert!(decide(&p, "ruled.example:9000").is_allowed());
    assert_eq!(
        decide(&p, "ruled.example:443").reason,
        Reason::PortNotAllowed
    );
}

#[test]
fn ide_presets_are_included_by_name_and_not_in_the_default_list() {
    let d = Dir::new();
    d.write(
        "policy.toml",
        "include = [{ preset = \"vscode\" }, { preset = \"jetbrains\" }]\n",
    );
    let p = d.load("policy.toml");
    for t in [
        "update.code.visualstudio.com:443",
        "main.vscode-cdn.net:443",
        "x.gallerycdn.vsassets.io:443",
        "download.jetbrains.com:443",
        "cache-redirector.jetbrains.com:443",
    ] {
        assert!(decide(&p, t).is_allowed(), "{t}");
    }
    assert_eq!(
        decide(&p, "update.code.visualstudio.com:443")
            .rule
            .unwrap()
            .to_string(),
        "<preset>/vscode.txt:5"
    );
    assert!(!decide(&p, "gallerycdn.vsassets.io:443").is_allowed());
    assert!(!decide(&p, "visualstudio.com:443").is_allowed());
    let default = Policy::embedded_default();
    assert!(!decide(&default, "update.code.visualstudio.com:443").is_allowed());
    let e = d.err("include = [{ preset = \"emacs\" }]\n");
    assert!(
        e.contains("unknown include preset \"emacs\"; known presets: vscode, jetbrains"),
        "{e}"
    );
    let e = d.err("include = [{ preset = \"vscode\", format = \"seed\" }]\n");
    assert!(e.contains("a preset include takes no `format`"), "{e}");
    let e = d.err("include = [{ preset = 1 }]\n");
    assert!(e.contains("include preset must be a string"), "{e}");
}
