//! One test per error message: each asserts FILE:LINE:COL and the text.

use kennel_policy::{LegacyEnv, ListFormat, Policy};

use super::support::Dir;

fn toml_err(toml: &str) -> String {
    Dir::new().err(toml)
}

fn assert_starts(got: &str, want: &str) {
    assert!(got.starts_with(want), "got:  {got}\nwant: {want}…");
}

#[test]
fn unknown_top_level_key() {
    assert_starts(
        &toml_err("mode = \"enforce\"\ncolour = 1\n"),
        "policy.toml:2:1: unknown field `colour`, expected one of",
    );
}

#[test]
fn unknown_key_in_allow() {
    assert_starts(
        &toml_err("[allow]\nhost = [\"a.com\"]\n"),
        "policy.toml:2:1: unknown field `host`, expected `hosts` or `cidrs`",
    );
}

#[test]
fn unknown_key_in_rule() {
    assert_starts(
        &toml_err("[[rule]]\nhosts = [\"a.com\"]\nport = [1]\n"),
        "policy.toml:3:1: unknown field `port`",
    );
}

#[test]
fn unknown_key_in_upstream_route() {
    assert_starts(
        &toml_err(
            "[upstream]\n[[upstream.route]]\nhosts = [\"a.com\"]\nvia = \"direct\"\nproxy = 1\n",
        ),
        "policy.toml:5:1: unknown field `proxy`",
    );
}

#[test]
fn invalid_mode() {
    assert_starts(
        &toml_err("mode = \"block\"\n"),
        "policy.toml:1:8: unknown variant `block`, expected `enforce` or `report`",
    );
}

#[test]
fn toml_syntax_error() {
    assert_starts(&toml_err("[allow\nhosts = []\n"), "policy.toml:1:");
}

#[test]
fn wrong_type() {
    assert_starts(
        &toml_err("[allow]\nhosts = \"a.com\"\n"),
        "policy.toml:2:9: invalid type: string \"a.com\", expected a sequence",
    );
}

#[test]
fn empty_host_pattern() {
    assert_eq!(
        toml_err("[allow]\nhosts = [\"\"]\n"),
        "policy.toml:2:11: empty host pattern; expected example.com, *.example.com or .example.com"
    );
}

#[test]
fn whitespace_in_pattern() {
    assert_eq!(
        toml_err("[allow]\nhosts = [\"git hub.com\"]\n"),
        "policy.toml:2:14: host pattern \"git hub.com\" contains whitespace; expected example.com, *.example.com or .example.com, one per entry"
    );
}

#[test]
fn star_not_leading() {
    assert_eq!(
        toml_err("[allow]\nhosts = [\"a.*.com\"]\n"),
        "policy.toml:2:13: `*` is only allowed as a leading `*.` label in \"a.*.com\"; expected *.example.com"
    );
    assert_eq!(
        toml_err("[allow]\nhosts = [\"git*.com\"]\n"),
        "policy.toml:2:14: `*` is only allowed as a leading `*.` label in \"git*.com\"; expected *.example.com"
    );
}

#[test]
fn port_in_host_pattern() {
    assert_eq!(
        toml_err("[allow]\nhosts = [\"github.com:443\"]\n"),
        "policy.toml:2:21: host pattern \"github.com:443\" contains a port or an IPv6 address; ports belong in [defaults] ports or a [[rule]] with ports, IP addresses in cidrs"
    );
}

#[test]
fn empty_label() {
    assert_eq!(
        toml_err("[deny]\nhosts = [\"a..com\"]\n"),
        "policy.toml:2:13: host pattern \"a..com\" has an empty label; expected labels separated by single dots"
    );
}

#[test]
fn over_long_name_and_label() {
    let name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
    assert_eq!(
        toml_err(&format!("[allow]\nhosts = [\"{name}\"]\n")),
        format!("policy.toml:2:11: host pattern \"{name}\" is longer than 253 characters")
    );
    let label = "b".repeat(64);
    assert_eq!(
        toml_err(&format!("[allow]\nhosts = [\"x.{label}.com\"]\n")),
        format!(
            "policy.toml:2:13: label \"{label}\" in host pattern \"x.{label}.com\" is longer than 63 characters"
        )
    );
}

#[test]
fn url_as_pattern() {
    assert_eq!(
        toml_err("[allow]\nhosts = [\"https://github.com/\"]\n"),
        "policy.toml:2:17: host pattern \"https://github.com/\" looks like a URL; expected a bare host such as example.com"
    );
}

#[test]
fn regex_as_native_pattern() {
    assert_eq!(
        toml_err("[allow]\nhosts = ['\\.github\\.com$']\n"),
        "policy.toml:2:11: host pattern \"\\\\.github\\\\.com$\" looks like a regular expression; expected example.com, *.example.com or .example.com (regular expressions are not supported)"
    );
}

#[test]
fn ip_as_host_pattern() {
    assert_eq!(
        toml_err("[allow]\nhosts = [\"127.0.0.1\"]\n"),
        "policy.toml:2:11: host pattern \"127.0.0.1\" is an IP address; IP destinations are allowed only by cidrs, e.g. cidrs = [\"127.0.0.1/32\"]"
    );
}

#[test]
fn invalid_idn() {
    assert_starts(
        &toml_err("[allow]\nhosts = [\"xn--zz.example\"]\n"),
        "policy.toml:2:11: host pattern \"xn--zz.example\" is not a valid domain name",
    );
}

#[test]
fn invalid_cidr() {
    assert_eq!(
        toml_err("[allow]\ncidrs = [\"10.0.0.0/33\"]\n"),
        "policy.toml:2:11: invalid cidr \"10.0.0.0/33\"; expected an address range such as 10.0.0.0/8 or fd00::/8"
    );
    assert_eq!(
        toml_err("[allow]\ncidrs = [\"10.1.2.3/8\"]\n"),
        "policy.toml:2:11: cidr \"10.1.2.3/8\" has host bits set; expected 10.0.0.0/8"
    );
}

#[test]
fn port_out_of_range() {
    assert_eq!(
        toml_err("[defaults]\nports = [443, 70000]\n"),
        "policy.toml:2:15: port 70000 is out of range; expected 1-65535"
    );
    assert_eq!(
        toml_err("[[rule]]\nhosts = [\"a.com\"]\nports = [0]\n"),
        "policy.toml:3:10: port 0 is out of range; expected 1-65535"
    );
}

#[test]
fn empty_port_list() {
    assert_eq!(
        toml_err("[defaults]\nports = []\n"),
        "policy.toml:2:9: empty port list; expected at least one port, e.g. ports = [443]"
    );
}

#[test]
fn rule_without_hosts() {
    assert_starts(
        &toml_err("[[rule]]\nports = [5000]\n"),
        "policy.toml:1:1: [[rule]] has no hosts and no cidrs",
    );
}

#[test]
fn missing_include() {
    assert_starts(
        &toml_err("include = [\"nope.txt\"]\n"),
        "policy.toml:1:12: cannot read include nope.txt: No such file or directory",
    );
}

#[test]
fn include_bad_format_and_key() {
    assert_eq!(
        toml_err("include = [{ path = \"a.txt\", format = \"regex\" }]\n"),
        "policy.toml:1:12: unknown include format \"regex\"; expected \"seed\" or \"native\""
    );
    assert_starts(
        &toml_err("\ninclude = [{ file = \"a.txt\" }]\n"),
        "policy.toml:2:12: unknown key `file` in include; expected \"file.txt\" or { path = \"file.txt\", format = \"seed\" | \"native\" }",
    );
    assert_starts(
        &toml_err("include = [3]\n"),
        "policy.toml:1:12: invalid include 3;",
    );
}

#[test]
fn error_in_native_list_names_list_line_and_column() {
    let d = Dir::new();
    d.write("list.txt", "# ok\ngithub.com\n   bad..name\n");
    let e = d.err("include = [\"list.txt\"]\n");
    assert_eq!(
        e,
        "list.txt:3:8: host pattern \"bad..name\" has an empty label; expected labels separated by single dots"
    );
}

#[test]
fn seed_list_rejects_other_regex_lines() {
    let d = Dir::new();
    d.write(
        "seed.txt",
        "github.com\n\\.cloudfront\\.net$\n^api\\.example\\.com$\n",
    );
    let e = d.err("include = [{ path = \"seed.txt\", format = \"seed\" }]\n");
    assert_eq!(
        e,
        "seed.txt:3:1: regular expression \"^api\\\\.example\\\\.com$\" is not supported in a seed list; expected a bare domain (example.com, meaning it and its subdomains) or exactly the Tinyproxy shape \\.example\\.com$"
    );
    // Unescaped dot inside the Tinyproxy shape is not "exactly that shape".
    d.write("seed.txt", "\\.cloudfront.net$\n");
    assert_starts(
        &d.err("include = [{ path = \"seed.txt\", format = \"seed\" }]\n"),
        "seed.txt:1:1: regular expression \"\\\\.cloudfront.net$\" is not supported in a seed list",
    );
}

#[test]
fn unsupported_upstream_scheme() {
    assert_eq!(
        toml_err("[upstream]\ndefault = \"ftp://proxy:21\"\n"),
        "policy.toml:2:12: unsupported upstream scheme \"ftp\"; expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port"
    );
}

#[test]
fn upstream_without_port() {
    assert_eq!(
        toml_err("[upstream]\ndefault = \"socks5h://proxy\"\n"),
        "policy.toml:2:12: upstream \"socks5h://proxy\" has no port; expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port"
    );
}

#[test]
fn upstream_error_does_not_echo_password() {
    let e = toml_err("[upstream]\ndefault = \"socks5h://user:s3cret@proxy\"\n");
    assert!(!e.contains("s3cret"), "{e}");
    assert_eq!(
        e,
        "policy.toml:2:12: upstream \"socks5h://…@proxy\" has no port; expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port"
    );
}

#[test]
fn credentials_env_and_file() {
    assert_eq!(
        toml_err(
            "[upstream]\ndefault = \"http://p:3128\"\ndefault_credentials = { env = \"X\", file = \"y\" }\n"
        ),
        "policy.toml:3:23: credentials have both env and file; expected only one of { env = \"VAR\" } or { file = \"path\" }"
    );
}

#[test]
fn credentials_in_url_and_key() {
    assert_eq!(
        toml_err(
            "[upstream]\n[[upstream.route]]\nhosts = [\"a.com\"]\nvia = \"http://u:p@p:3128\"\ncredentials = { file = \"c.txt\" }\n"
        ),
        "policy.toml:5:15: both user:password in the upstream URL and credentials are set; expected only one"
    );
}

#[test]
fn credentials_env_unset() {
    let e = toml_err(
        "[upstream]\ndefault = \"http://p:3128\"\ndefault_credentials = { env = \"KENNEL_TEST_SURELY_UNSET_VAR\" }\n",
    );
    assert_eq!(
        e,
        "policy.toml:3:23: credentials variable KENNEL_TEST_SURELY_UNSET_VAR is not set; expected it to hold user:password"
    );
}

#[test]
fn credentials_file_missing_and_malformed() {
    let d = Dir::new();
    assert_starts(
        &d.err(
            "[upstream]\ndefault = \"http://p:3128\"\ndefault_credentials = { file = \"creds\" }\n",
        ),
        "policy.toml:3:23: cannot read credentials file creds: No such file or directory",
    );
    d.write("creds", "no-colon\n");
    assert_eq!(
        d.err(
            "[upstream]\ndefault = \"http://p:3128\"\ndefault_credentials = { file = \"creds\" }\n"
        ),
        "policy.toml:3:23: credentials file creds does not hold user:password"
    );
}

#[test]
fn credentials_for_direct() {
    assert_eq!(
        toml_err("[upstream]\ndefault = \"direct\"\ndefault_credentials = { env = \"X\" }\n"),
        "policy.toml:3:23: default_credentials given for a direct upstream; expected a proxy URL"
    );
}

#[test]
fn missing_policy_file_names_it() {
    let d = Dir::new();
    let e = Policy::load(&d.path("absent.toml")).unwrap_err();
    assert!(e.location().is_none());
    assert_eq!(
        d.strip(&e.to_string()),
        "absent.toml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn location_parts() {
    let d = Dir::new();
    let p = d.write("policy.toml", "[allow]\nhosts = [\"a..b\"]\n");
    let e = Policy::load(&p).unwrap_err();
    let (file, line, col) = e.location().unwrap();
    assert_eq!((file, line, col), (p.as_path(), 2, 13));
}

/// Issue 9 item 8: a conflict between two upstream variables names both, with file and line.
#[test]
fn legacy_upstream_conflict_names_both_with_file_and_line() {
    let d = Dir::new();
    let p = d.write(
        ".env",
        "UPSTREAM_SOCKS5=h:1080\n# comment\nUPSTREAM_PROXY=http://p:3128\n",
    );
    let legacy = LegacyEnv::from_dotenv(&p).unwrap();
    let e = Policy::embedded_default_with(&legacy).unwrap_err();
    assert_eq!(e.location().map(|(_, l, c)| (l, c)), Some((1, 17)));
    assert_eq!(
        d.strip(&e.to_string()),
        ".env:1:17: UPSTREAM_SOCKS5 and UPSTREAM_PROXY (.env:3) both choose the default upstream; set only one"
    );
    // From the process environment the variables are named as such.
    let legacy = LegacyEnv {
        upstream_socks5: Some("h:1080".into()),
        upstream_proxy: Some("http://p:3128".into()),
        ..LegacyEnv::default()
    };
    assert_eq!(
        Policy::embedded_default_with(&legacy)
            .unwrap_err()
            .to_string(),
        "$UPSTREAM_SOCKS5:1:1: UPSTREAM_SOCKS5 and UPSTREAM_PROXY ($UPSTREAM_PROXY) both choose the default upstream; set only one"
    );
}

#[test]
fn legacy_list_error_points_into_variable() {
    let legacy = LegacyEnv {
        no_upstream: Some("ok.com, bad..com".into()),
        ..LegacyEnv::default()
    };
    assert_eq!(
        Policy::embedded_default_with(&legacy)
            .unwrap_err()
            .to_string(),
        "$NO_UPSTREAM:1:13: host pattern \"bad..com\" has an empty label; expected labels separated by single dots"
    );
    let legacy = LegacyEnv {
        upstream_socks5: Some("nohost".into()),
        ..LegacyEnv::default()
    };
    assert_starts(
        &Policy::embedded_default_with(&legacy)
            .unwrap_err()
            .to_string(),
        "$UPSTREAM_SOCKS5:1:1: upstream \"socks5h://nohost\" has no port",
    );
}

#[test]
fn dotenv_malformed_line() {
    let d = Dir::new();
    let p = d.write(".env", "# c\nUPSTREAM_SOCKS5=h:1\n  garbage\n");
    assert_eq!(
        d.strip(&LegacyEnv::from_dotenv(&p).unwrap_err().to_string()),
        ".env:3:3: line is not KEY=VALUE (not shown: it may hold a secret); expected e.g. UPSTREAM_SOCKS5=host:port"
    );
}

#[test]
fn list_file_policy_errors() {
    let d = Dir::new();
    let p = d.write("whitelist.txt", "github.com\nfoo|bar\n");
    assert_starts(
        &d.strip(
            &Policy::load_list(&p, ListFormat::Seed, &LegacyEnv::default())
                .unwrap_err()
                .to_string(),
        ),
        "whitelist.txt:2:1: regular expression \"foo|bar\" is not supported in a seed list",
    );
}

#[test]
fn remaining_messages_table() {
    let table: &[(&str, &str)] = &[
        (
            "include = [{ path = 3 }]\n",
            "policy.toml:1:12: include path must be a string; expected \"file.txt\" or { path = \"file.txt\", format = \"seed\" | \"native\" }",
        ),
        (
            "include = [{ format = \"seed\" }]\n",
            "policy.toml:1:12: include without path; expected \"file.txt\" or { path = \"file.txt\", format = \"seed\" | \"native\" }",
        ),
        (
            "[allow]\nhosts = [\"me@github.com\"]\n",
            "policy.toml:2:13: host pattern \"me@github.com\" contains `@`; expected example.com, *.example.com or .example.com",
        ),
        (
            "[allow]\nhosts = [\"*.\"]\n",
            "policy.toml:2:13: host pattern \"*.\" has no domain after the prefix; expected example.com, *.example.com or .example.com",
        ),
        (
            "[allow]\nhosts = [\"github.com..\"]\n",
            "policy.toml:2:11: host pattern \"github.com..\" has an empty label; expected labels separated by single dots",
        ),
        (
            "[allow]\ncidrs = [\"not-an-ip\"]\n",
            "policy.toml:2:11: invalid cidr \"not-an-ip\"; expected an address range such as 10.0.0.0/8 or fd00::/8",
        ),
        (
            "[upstream]\n[[upstream.route]]\nvia = \"direct\"\n",
            "policy.toml:2:1: [[upstream.route]] has no hosts and no cidrs; expected hosts = [\".corp.example\"]",
        ),
        (
            "[upstream]\ndefault_credentials = { env = \"X\" }\n",
            "policy.toml:2:23: default_credentials without default; expected default = \"socks5h://host:port\" or similar",
        ),
        (
            "[upstream]\ndefault = \"http://p:1\"\ndefault_credentials = {}\n",
            "policy.toml:3:23: credentials name no source; expected { env = \"VAR\" } or { file = \"path\" }",
        ),
        (
            "[upstream]\ndefault = \"proxy:1080\"\n",
            "policy.toml:2:12: upstream \"proxy:1080\" is not a URL; expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port",
        ),
        (
            "[upstream]\ndefault = \"http://p:1/path\"\n",
            "policy.toml:2:12: upstream \"http://p:1/path\" has a path; expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port",
        ),
        (
            "[upstream]\ndefault = \"http://[::1:1\"\n",
            "policy.toml:2:12: upstream \"http://[::1:1\" has an unclosed `[`; expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port",
        ),
        (
            "[upstream]\ndefault = \"http://[zz]:1\"\n",
            "policy.toml:2:12: upstream \"http://[zz]:1\" has an invalid IPv6 address; expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port",
        ),
        (
            "[upstream]\ndefault = \"http://p:0\"\n",
            "policy.toml:2:12: upstream \"http://p:0\" has an invalid port \"0\"; expected 1-65535",
        ),
        (
            "[upstream]\ndefault = \"http://:8080\"\n",
            "policy.toml:2:12: upstream \"http://:8080\" has no host; expected direct, socks5://host:port, socks5h://host:port, http://host:port or https://host:port",
        ),
        (
            "[upstream]\ndefault = \"http://a..b:8080\"\n",
            "policy.toml:2:12: upstream \"http://a..b:8080\" has an invalid host: invalid host name \"a..b\"",
        ),
        (
            "[upstream]\ndefault = \"http://u:%zz@p:8080\"\n",
            "policy.toml:2:12: upstream \"http://…@p:8080\" has invalid percent-encoding in its user:password",
        ),
        (
            "[upstream]\ndefault = \"http://nopass@p:8080\"\n",
            "policy.toml:2:12: upstream \"http://…@p:8080\" has credentials that are not user:password",
        ),
    ];
    for (toml, want) in table {
        assert_eq!(toml_err(toml), *want, "{toml}");
    }
}
