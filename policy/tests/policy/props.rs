//! Property tests: normalisation idempotent; `.x` ≡ `x` ∪ `*.x`; decisions stable under case
//! and trailing dot.

use kennel_policy::{Host, HostPattern, Policy, Target};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9]{1,8}",
        "[a-z]{1,3}-[a-z0-9]{1,3}",
        Just("github".to_string()),
        Just("com".to_string()),
        Just("bücher".to_string()),
        Just("xn--bcher-kva".to_string()),
        Just("ÉVIL".to_string()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|v| v.join("."))
}

fn pattern_policy(patterns: &[String]) -> Policy {
    let hosts: Vec<String> = patterns.iter().map(|p| format!("{p:?}")).collect();
    let src = format!("[allow]\nhosts = [{}]\n", hosts.join(", "));
    Policy::from_toml_str(&src, std::path::Path::new("prop.toml")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn normalisation_is_idempotent(n in name(), dot in any::<bool>()) {
        let s = if dot { format!("{n}.") } else { n };
        if let Ok(h) = Host::parse(&s) {
            let again = Host::parse(&h.to_string().replace(['[', ']'], "")).unwrap();
            prop_assert_eq!(&again, &h);
            if let Host::Name(n) = &h {
                prop_assert_eq!(n.to_ascii_lowercase(), n.clone());
                prop_assert!(!n.ends_with('.'));
                prop_assert!(n.is_ascii());
            }
        }
        if let Ok(p) = HostPattern::parse(&s) {
            let again = HostPattern::parse(&p.to_string()).unwrap();
            prop_assert_eq!(again, p);
        }
    }

    #[test]
    fn apex_and_subdomains_is_union(x in name(), prefix in prop::collection::vec(label(), 0..3), suffix in prop::option::of(label())) {
        let Ok(exact) = HostPattern::parse(&x) else { return Ok(()) };
        let dot = HostPattern::parse(&format!(".{x}")).unwrap();
        let star = HostPattern::parse(&format!("*.{x}")).unwrap();
        let mut parts = prefix.clone();
        parts.push(x.clone());
        if let Some(s) = suffix { parts.push(s); }
        let host = parts.join(".");
        let Ok(Host::Name(h)) = Host::parse(&host) else { return Ok(()) };
        prop_assert_eq!(dot.matches(&h), exact.matches(&h) || star.matches(&h));
        // Same through full policies and the index.
        let t = Target { host: Host::Name(h.clone()), port: 443 };
        let pd = pattern_policy(&[format!(".{x}")]).decide(&t).is_allowed();
        let pu = pattern_policy(&[x.clone(), format!("*.{x}")]).decide(&t).is_allowed();
        prop_assert_eq!(pd, pu);
        prop_assert_eq!(pd, dot.matches(&h));
    }

    #[test]
    fn decision_stable_under_case_and_trailing_dot(
        h in name(),
        port in prop_oneof![Just(443u16), Just(80u16), Just(22u16)],
        upper in prop::collection::vec(any::<bool>(), 0..40),
    ) {
        let p = Policy::embedded_default();
        let variant: String = h.chars().zip(upper.iter().chain(std::iter::repeat(&false)))
            .map(|(c, u)| if *u { c.to_uppercase().next().unwrap_or(c) } else { c })
            .collect();
        let (Ok(a), Ok(b)) = (Target::from_host_port(&h, port), Target::from_host_port(&format!("{variant}."), port)) else {
            return Ok(());
        };
        prop_assert_eq!(p.decide(&a), p.decide(&b));
        let gh = Target::from_host_port(&format!("{variant}.GitHub.COM."), port).unwrap();
        let gl = Target::from_host_port(&format!("{}.github.com", h.to_lowercase()), port).unwrap();
        prop_assert_eq!(p.decide(&gh), p.decide(&gl));
    }
}
