//! Host patterns (`example.com`, `*.example.com`, `.example.com`) and the suffix index that
//! matches a host against any number of them in time proportional to its label count.

use crate::target::{MAX_LABEL_LEN, MAX_NAME_LEN, normalize_name};

/// What a host pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternKind {
    /// `example.com`: exactly that host.
    Exact,
    /// `*.example.com`: any subdomain, not the apex.
    Subdomains,
    /// `.example.com`: the apex and any subdomain.
    ApexAndSubdomains,
}

/// A validated, normalised host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// The kind of match.
    pub kind: PatternKind,
    /// The normalised domain (lowercase ASCII, punycode, no trailing dot).
    pub domain: String,
}

impl HostPattern {
    /// Parses and normalises a native host pattern. On error returns the byte offset inside
    /// `s` the error points at and the message (what is wrong; what was expected).
    pub fn parse(s: &str) -> Result<HostPattern, (usize, String)> {
        const EXPECTED: &str = "expected example.com, *.example.com or .example.com";
        if s.is_empty() {
            return Err((0, format!("empty host pattern; {EXPECTED}")));
        }
        if let Some(i) = s.find(char::is_whitespace) {
            return Err((
                i,
                format!("host pattern {s:?} contains whitespace; {EXPECTED}, one per entry"),
            ));
        }
        if s.contains("://") || s.contains('/') {
            let i = s.find('/').unwrap_or(0);
            return Err((
                i,
                format!(
                    "host pattern {s:?} looks like a URL; expected a bare host such as example.com"
                ),
            ));
        }
        if let Some(i) = s.find(['\\', '^', '$', '(', ')', '[', ']', '{', '}', '|', '+', '?']) {
            return Err((
                i,
                format!(
                    "host pattern {s:?} looks like a regular expression; {EXPECTED} (regular expressions are not supported)"
                ),
            ));
        }
        if let Some(i) = s.find('@') {
            return Err((i, format!("host pattern {s:?} contains `@`; {EXPECTED}")));
        }
        if let Some(i) = s.find(':') {
            return Err((
                i,
                format!(
                    "host pattern {s:?} contains a port or an IPv6 address; ports belong in [defaults] ports or a [[rule]] with ports, IP addresses in cidrs"
                ),
            ));
        }
        let (kind, rest, off) = if let Some(r) = s.strip_prefix("*.") {
            (PatternKind::Subdomains, r, 2)
        } else if let Some(r) = s.strip_prefix('.') {
            (PatternKind::ApexAndSubdomains, r, 1)
        } else {
            (PatternKind::Exact, s, 0)
        };
        if let Some(i) = rest.find('*') {
            return Err((
                off + i,
                format!(
                    "`*` is only allowed as a leading `*.` label in {s:?}; expected *.example.com"
                ),
            ));
        }
        let body = rest.strip_suffix('.').unwrap_or(rest);
        if body.is_empty() {
            return Err((
                off,
                format!("host pattern {s:?} has no domain after the prefix; {EXPECTED}"),
            ));
        }
        if let Some(i) = body.find("..") {
            return Err((
                off + i + 1,
                format!(
                    "host pattern {s:?} has an empty label; expected labels separated by single dots"
                ),
            ));
        }
        if body.starts_with('.') || body.ends_with('.') {
            return Err((
                off,
                format!(
                    "host pattern {s:?} has an empty label; expected labels separated by single dots"
                ),
            ));
        }
        if body.len() > MAX_NAME_LEN && body.is_ascii() {
            return Err((
                off,
                format!("host pattern {s:?} is longer than {MAX_NAME_LEN} characters"),
            ));
        }
        if let Some(label) = body
            .split('.')
            .find(|l| l.len() > MAX_LABEL_LEN && l.is_ascii())
        {
            let i = body.find(label).unwrap_or(0);
            return Err((
                off + i,
                format!(
                    "label {label:?} in host pattern {s:?} is longer than {MAX_LABEL_LEN} characters"
                ),
            ));
        }
        let Some(domain) = normalize_name(body) else {
            return Err((
                off,
                format!(
                    "host pattern {s:?} is not a valid domain name (letters, digits, `-`, `_`, IDN or xn-- labels, at most {MAX_NAME_LEN} characters); {EXPECTED}"
                ),
            ));
        };
        if !matches!(crate::target::parse_ipv4_like(&domain), Ok(None)) {
            return Err((
                off,
                format!(
                    "host pattern {s:?} is an IP address; IP destinations are allowed only by cidrs, e.g. cidrs = [\"{body}/32\"]"
                ),
            ));
        }
        Ok(HostPattern { kind, domain })
    }

    /// Does this pattern match the normalised host name `host`?
    pub fn matches(&self, host: &str) -> bool {
        let sub = host
            .strip_suffix(self.domain.as_str())
            .is_some_and(|p| p.ends_with('.') && p.len() > 1);
        match self.kind {
            PatternKind::Exact => host == self.domain,
            PatternKind::Subdomains => sub,
            PatternKind::ApexAndSubdomains => sub || host == self.domain,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            PatternKind::Exact => f.write_str(&self.domain),
            PatternKind::Subdomains => write!(f, "*.{}", self.domain),
            PatternKind::ApexAndSubdomains => write!(f, ".{}", self.domain),
        }
    }
}

const NONE: u32 = u32::MAX;

/// The Fx hash (rustc's, from `rustc-hash`): fast for short keys. Keys come only from the
/// policy (trusted), so hash flooding through insertion is not possible; lookups with
/// client-chosen hosts only probe.
type FxMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// Index from host patterns to ids. Lookup costs one hash probe per label of the host,
/// independent of the number of patterns.
#[derive(Debug, Default, Clone)]
pub(crate) struct HostIndex {
    /// Exact host -> head node.
    exact: FxMap<Box<str>, u32>,
    /// Domain whose proper subdomains match -> head node.
    sub: FxMap<Box<str>, u32>,
    /// Linked nodes: (id, next node).
    nodes: Vec<(u32, u32)>,
    len: usize,
}

impl HostIndex {
    pub(crate) fn insert(&mut self, p: &HostPattern, id: u32) {
        self.len += 1;
        if matches!(p.kind, PatternKind::Exact | PatternKind::ApexAndSubdomains) {
            Self::push(&mut self.nodes, &mut self.exact, &p.domain, id);
        }
        if matches!(
            p.kind,
            PatternKind::Subdomains | PatternKind::ApexAndSubdomains
        ) {
            Self::push(&mut self.nodes, &mut self.sub, &p.domain, id);
        }
    }

    fn push(nodes: &mut Vec<(u32, u32)>, map: &mut FxMap<Box<str>, u32>, key: &str, id: u32) {
        let node = u32::try_from(nodes.len()).unwrap_or(NONE);
        match map.get_mut(key) {
            Some(head) => {
                // Append at the end to keep insertion order.
                let mut cur = *head;
                loop {
                    let next = nodes[cur as usize].1;
                    if next == NONE {
                        break;
                    }
                    cur = next;
                }
                nodes.push((id, NONE));
                nodes[cur as usize].1 = node;
            }
            None => {
                nodes.push((id, NONE));
                map.insert(key.into(), node);
            }
        }
    }

    /// Reserves room for `n` more patterns.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.exact.reserve(n);
        self.sub.reserve(n);
        self.nodes.reserve(n + n / 2);
    }

    /// Number of patterns inserted.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` with the id of every pattern matching `host`, most specific first (exact,
    /// then the longest suffix). Stops when `f` returns `true`.
    pub(crate) fn find(&self, host: &str, mut f: impl FnMut(u32) -> bool) -> bool {
        if self.len == 0 {
            return false;
        }
        if let Some(&head) = self.exact.get(host)
            && self.walk(head, &mut f)
        {
            return true;
        }
        let mut rest = host;
        while let Some(i) = rest.find('.') {
            rest = &rest[i + 1..];
            if let Some(&head) = self.sub.get(rest)
                && self.walk(head, &mut f)
            {
                return true;
            }
        }
        false
    }

    fn walk(&self, mut node: u32, f: &mut impl FnMut(u32) -> bool) -> bool {
        while node != NONE {
            let (id, next) = self.nodes[node as usize];
            if f(id) {
                return true;
            }
            node = next;
        }
        false
    }
}
