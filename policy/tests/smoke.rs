//! Smoke test of the embedded default policy.

use kennel_policy::*;

#[test]
fn embedded_default_parses() {
    let p = Policy::embedded_default();
    assert_eq!(p.stats().allow_patterns, 51);
    let t = Target::parse_authority("api.github.com:443").unwrap();
    let d = p.decide(&t);
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(
        d.rule.unwrap().to_string(),
        "<embedded>/default-whitelist.txt:4"
    );
    let d = p.decide(&Target::parse_authority("github.com.evil.net:443").unwrap());
    assert_eq!(d.reason, Reason::NotInAllowlist);
}
