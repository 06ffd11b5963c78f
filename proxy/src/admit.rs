//! The one admission step: "may a connection go to this destination, at these checked
//! addresses, under this policy, now?" It is asked through [`check`] at the first decision of a
//! tunnel or request (before DNS, then again with every address that will be used), on every
//! keep-alive request (each is a first decision), after a reload raced a registration
//! ([`recheck`]) and at revocation ([`crate::tunnels::Registry::revoke_denied`]). Copies of
//! this question drifted apart before: revocation's own address guard forgot `[deny] cidrs` for
//! public addresses.

use std::net::{IpAddr, SocketAddr};

use kennel_policy::{Decision, Policy, Target};

use crate::Shared;
use crate::dial::{self, Route};
use crate::resolve;
use crate::respond::Failure;

/// The policy decision for `target`, then the address guard over every one of `addrs` (none
/// yet before DNS, or when an upstream resolves the name). A refusal carries the hint that
/// would allow it.
pub fn check(policy: &Policy, target: &Target, addrs: &[IpAddr]) -> Result<Decision, Failure> {
    let decision = policy.decide(target);
    if !decision.is_allowed() {
        let hint = policy.how_to_allow(target);
        return Err(Failure::Denied { decision, hint });
    }
    resolve::guard_all(policy, addrs).map_err(Failure::Guard)?;
    Ok(decision)
}

/// First decision for a new tunnel or request: [`check`] before any DNS (a denied name is never
/// looked up), then resolve and route, which runs [`check`] again with every address the
/// route will use.
pub async fn admit(
    shared: &Shared,
    policy: &Policy,
    target: &Target,
) -> Result<(Decision, Route), Failure> {
    let decision = check(policy, target, &[])?;
    let route = dial::route(shared, policy, target).await?;
    Ok((decision, route))
}

/// If the policy changed since `generation` (a reload between the decision and the
/// registration would have missed this connection), [`check`] `target` and its checked address
/// against the policy in force now; `Some(failure)` when it refuses.
pub fn recheck(
    shared: &Shared,
    generation: u64,
    target: &Target,
    resolved: Option<SocketAddr>,
) -> Option<Failure> {
    if shared.store.generation() == generation {
        return None;
    }
    let ips: Vec<IpAddr> = resolved.map(|a| a.ip()).into_iter().collect();
    check(&shared.store.current(), target, &ips).err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy(src: &str) -> Policy {
        Policy::from_toml_str(src, Path::new("/p/policy.toml")).expect("valid policy")
    }

    fn target(s: &str) -> Target {
        Target::parse_authority(s).expect("valid target")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid IP")
    }

    /// The same question gets the same answer whether the address is loopback (allowed by
    /// `cidrs`) or public, and a `[deny] cidrs` entry refuses both. No traffic: the addresses
    /// are only classified.
    #[test]
    fn deny_cidrs_refuse_public_and_cidr_allowed_addresses_alike() {
        let p = policy(
            "[allow]\nhosts = [\"pub.test\"]\ncidrs = [\"127.0.0.0/8\"]\n[deny]\ncidrs = [\"8.8.8.0/24\", \"127.0.0.1/32\"]\n",
        );
        let t = target("pub.test:443");
        assert!(check(&p, &t, &[ip("1.1.1.1"), ip("127.0.0.2")]).is_ok());
        for a in ["8.8.8.8", "127.0.0.1", "::ffff:8.8.8.8"] {
            match check(&p, &t, &[ip(a)]) {
                Err(Failure::Guard(g)) => assert!(g.denied_by.is_some(), "{a}: {g}"),
                other => panic!("{a}: expected a guard refusal, got {other:?}"),
            }
        }
        match check(&p, &target("other.test:443"), &[ip("1.1.1.1")]) {
            Err(Failure::Denied { decision, .. }) => {
                assert_eq!(decision.reason, kennel_policy::Reason::NotInAllowlist);
            }
            other => panic!("expected a policy denial, got {other:?}"),
        }
    }

    /// Applies `hint` to the policy text the way a person reads it: add to (or remove from) the
    /// named list of the named table, or add a `[[rule]]` table.
    fn apply(policy_text: &str, hint: &kennel_policy::Hint) -> String {
        use kennel_policy::Edit;
        use toml::{Table, Value};
        let mut doc: Table = toml::from_str(policy_text).expect("policy is TOML");
        fn list<'a>(doc: &'a mut Table, table: &str, key: &str) -> &'a mut Vec<Value> {
            let t = doc
                .entry(table)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("a table");
            t.entry(key)
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .expect("an array")
        }
        let rule = |key: &str, entry: String, port: u16| {
            let mut t = Table::new();
            t.insert(key.into(), Value::Array(vec![Value::String(entry)]));
            t.insert(
                "ports".into(),
                Value::Array(vec![Value::Integer(port.into())]),
            );
            Value::Table(t)
        };
        for e in &hint.edits {
            match e {
                Edit::RemoveDeny { rule, key } => {
                    let l = list(&mut doc, "deny", key);
                    let before = l.len();
                    l.retain(|v| v.as_str() != Some(&*rule.pattern));
                    assert_eq!(
                        l.len() + 1,
                        before,
                        "{} named once in [deny] {key}",
                        rule.pattern
                    );
                }
                Edit::AllowHost(h) => {
                    list(&mut doc, "allow", "hosts").push(Value::String(h.clone()))
                }
                Edit::AllowCidr(c) => {
                    list(&mut doc, "allow", "cidrs").push(Value::String(c.to_string()))
                }
                Edit::RuleHost { host, port } => doc
                    .entry("rule")
                    .or_insert_with(|| Value::Array(Vec::new()))
                    .as_array_mut()
                    .expect("[[rule]] array")
                    .push(rule("hosts", host.clone(), *port)),
                Edit::RuleCidr { cidr, port } => doc
                    .entry("rule")
                    .or_insert_with(|| Value::Array(Vec::new()))
                    .as_array_mut()
                    .expect("[[rule]] array")
                    .push(rule("cidrs", cidr.to_string(), *port)),
            }
        }
        toml::to_string(&doc).expect("serialise TOML")
    }

    /// Issue 9, item 5: for an IP-literal target on a port that is not allowed the body said to
    /// add a `[[rule]]` with `hosts = ["127.0.0.1"]`, which makes the policy invalid. For every
    /// deny reason: the hint is in the body, and the policy with the hint applied as said is
    /// valid and admits the same request (same target, same resolved addresses).
    #[test]
    fn deny_hints_applied_as_said_admit_the_same_request() {
        const BASE: &str = "[defaults]\nports = [443]\n[allow]\nhosts = [\"github.com\", \"loop.test\", \"pub.test\"]\n";
        // (reason, policy, target, resolved addresses)
        let cases: &[(&str, &str, &str, &[&str])] = &[
            ("not_in_allowlist", BASE, "evil.example:443", &[]),
            ("not_in_allowlist", BASE, "evil.example:8443", &[]),
            (
                "not_in_allowlist",
                "mode = \"enforce\"\n",
                "evil.example:443",
                &[],
            ),
            ("port_not_allowed", BASE, "github.com:8443", &[]),
            (
                "port_not_allowed",
                "[allow]\ncidrs = [\"127.0.0.0/8\"]\n",
                "127.0.0.1:8080",
                &["127.0.0.1"],
            ),
            (
                "port_not_allowed",
                "[allow]\ncidrs = [\"::1/128\"]\n",
                "[::1]:8080",
                &["::1"],
            ),
            (
                "ip_literal_not_allowed",
                BASE,
                "127.0.0.1:443",
                &["127.0.0.1"],
            ),
            (
                "ip_literal_not_allowed",
                BASE,
                "127.0.0.1:8080",
                &["127.0.0.1"],
            ),
            (
                "ip_literal_not_allowed",
                BASE,
                "[::ffff:169.254.169.254]:443",
                &["::ffff:169.254.169.254"],
            ),
            (
                "denied_by_rule",
                "[allow]\nhosts = [\".github.com\"]\n[deny]\nhosts = [\"gist.github.com\"]\n",
                "gist.github.com:443",
                &[],
            ),
            (
                "denied_by_rule",
                "[deny]\nhosts = [\".github.com\", \"gist.github.com\"]\n",
                "gist.github.com:8443",
                &[],
            ),
            (
                "denied_by_rule",
                "[allow]\ncidrs = [\"10.0.0.0/8\"]\n[deny]\ncidrs = [\"10.9.0.0/16\"]\n",
                "10.9.1.1:443",
                &["10.9.1.1"],
            ),
            ("address_not_allowed", BASE, "loop.test:443", &["127.0.0.1"]),
            (
                "address_not_allowed",
                &format!("{BASE}[deny]\ncidrs = [\"8.8.8.0/24\"]\n"),
                "pub.test:443",
                &["1.1.1.1", "8.8.8.8", "10.0.0.1"],
            ),
        ];
        let file = Path::new("/p/policy.toml");
        for (reason, text, t, addrs) in cases {
            let case = format!("{reason} {t} under {text:?}");
            let p = Policy::from_toml_str(text, file).expect(&case);
            let t = target(t);
            let addrs: Vec<IpAddr> = addrs.iter().map(|a| ip(a)).collect();
            // The first decision: before DNS, then with the addresses (as `admit` does).
            let f = check(&p, &t, &[])
                .and_then(|_| check(&p, &t, &addrs))
                .expect_err(&case);
            assert_eq!(f.reason().to_string(), *reason, "{case}");
            let hint = match &f {
                Failure::Denied { hint, .. } => hint,
                Failure::Guard(g) => &g.hint,
                other => panic!("{case}: not a refusal: {other:?}"),
            };
            assert!(!hint.is_empty(), "{case}: no hint");
            let body = f.body(Some(&t), Some(file));
            let said = hint.render(&file.display().to_string());
            assert!(
                body.contains(&format!("To allow it, {said}.")),
                "{case}: {body}"
            );
            assert!(
                !said.contains("hosts = [\"127.") && !said.contains("hosts = [\"::"),
                "{case}: {said}"
            );
            let edited = apply(text, hint);
            let p2 = Policy::from_toml_str(&edited, file).unwrap_or_else(|e| {
                panic!("{case}: the hint {said:?} gives an invalid policy: {e}\n{edited}")
            });
            let admitted = check(&p2, &t, &[]).and_then(|_| check(&p2, &t, &addrs));
            assert!(
                admitted.is_ok(),
                "{case}: still refused after {said:?}: {admitted:?}\n{edited}"
            );
        }
    }
}
