//! Translating seed lists and Tinyproxy filter files (one regex per line) into native host
//! patterns, with the example hosts whose verdict changes.
//!
//! Tinyproxy matched each filter line as an *unanchored* regular expression against the host,
//! with `.` matching any character, and did not restrict CONNECT ports. A line is translated when
//! it has one of these shapes (`D` = labels with `\.` or `.` between them):
//!
//! | line            | native          |
//! |-----------------|-----------------|
//! | `D`             | `.D` (seed meaning: apex and subdomains) |
//! | `D$`            | `.D`            |
//! | `(^\|\.)D$`     | `.D`            |
//! | `\.D$`, `\.D`   | `*.D`           |
//! | `^D$`, `^D`     | `D`             |
//! | `*.D`, `.D`     | unchanged (already native) |
//! | `://\(.*\.\)?D\(/\|$\)`, `://(.*\.)?D(/\|$)` | `.D` (a `FilterURLs On` line, basic or `-E` syntax) |
//! | `://D\(/\|$\)`, `://D(/\|$)` | `D` |
//!
//! Anything else (alternation, classes, repetition …) is reported as untranslatable. Only an
//! unescaped `.` matched any character; each translated line's notes say which of its dots
//! were unescaped.

use crate::pattern::{HostPattern, PatternKind};

/// One line of the input that is not blank or a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigratedLine {
    /// 1-based line number.
    pub line: u32,
    /// The line as written (trimmed).
    pub original: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// The result of translating one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Translated into a native pattern.
    Translated {
        /// The native pattern.
        pattern: HostPattern,
        /// Example hosts (for a URL filter line, example URLs) whose verdict differs between
        /// the old regex and the pattern.
        changes: Vec<Change>,
        /// What this line meant to Tinyproxy that the pattern does not carry over, e.g. which
        /// of its dots were unescaped and so matched any character.
        notes: Vec<String>,
    },
    /// No native equivalent; the line is listed, not dropped.
    Untranslatable {
        /// Why.
        why: String,
    },
}

/// An example host whose verdict changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The example host (for a URL filter line, the example request URL).
    pub host: String,
    /// Whether the old Tinyproxy filter allowed it.
    pub old_allowed: bool,
    /// Whether the native pattern allows it.
    pub new_allowed: bool,
    /// Why the verdict differs.
    pub why: String,
}

/// The translation of a whole file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Migration {
    /// Every non-blank, non-comment line in order.
    pub lines: Vec<MigratedLine>,
}

impl Migration {
    /// The translated patterns, in input order.
    pub fn patterns(&self) -> impl Iterator<Item = &HostPattern> {
        self.lines.iter().filter_map(|l| match &l.outcome {
            Outcome::Translated { pattern, .. } => Some(pattern),
            Outcome::Untranslatable { .. } => None,
        })
    }

    /// The lines that could not be translated.
    pub fn untranslatable(&self) -> impl Iterator<Item = &MigratedLine> {
        self.lines
            .iter()
            .filter(|l| matches!(l.outcome, Outcome::Untranslatable { .. }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
}

#[derive(Debug, Clone)]
struct OldRegex {
    anchor_start: bool,
    apex_group: bool,
    toks: Vec<Tok>,
    anchor_end: bool,
}

impl OldRegex {
    fn parse(s: &str) -> Result<OldRegex, String> {
        let mut rest = s;
        let anchor_start = if let Some(r) = rest.strip_prefix('^') {
            rest = r;
            true
        } else {
            false
        };
        let apex_group = if let Some(r) = rest.strip_prefix("(^|\\.)") {
            rest = r;
            true
        } else {
            false
        };
        let anchor_end = if let Some(r) = rest.strip_suffix('$') {
            if !r.ends_with('\\') {
                rest = r;
                true
            } else {
                false
            }
        } else {
            false
        };
        let mut toks = Vec::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('.') => toks.push(Tok::Lit('.')),
                    Some('-') => toks.push(Tok::Lit('-')),
                    Some(o) => {
                        return Err(format!("the escape `\\{o}` has no host-pattern equivalent"));
                    }
                    None => return Err("it ends in a lone `\\`".to_string()),
                },
                '.' => toks.push(Tok::Any),
                c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                    toks.push(Tok::Lit(c.to_ascii_lowercase()));
                }
                '|' => {
                    return Err(
                        "alternation `|` has no host-pattern equivalent; list each host".into(),
                    );
                }
                '(' | ')' => {
                    return Err(
                        "groups `( )` have no host-pattern equivalent; list each host".into(),
                    );
                }
                '[' | ']' => {
                    return Err(
                        "character classes `[ ]` have no host-pattern equivalent; list each host"
                            .into(),
                    );
                }
                '*' | '+' | '?' | '{' | '}' => {
                    return Err(format!(
                        "repetition `{c}` has no host-pattern equivalent; list each host or use *.domain"
                    ));
                }
                '^' | '$' => {
                    return Err(format!(
                        "an anchor `{c}` in the middle has no host-pattern equivalent"
                    ));
                }
                o => return Err(format!("the character {o:?} cannot appear in a host")),
            }
        }
        if toks.is_empty() {
            return Err("it names no domain".to_string());
        }
        Ok(OldRegex {
            anchor_start,
            apex_group,
            toks,
            anchor_end,
        })
    }

    fn match_at(&self, host: &[char], at: usize) -> bool {
        if at + self.toks.len() > host.len() {
            return false;
        }
        let ok = self.toks.iter().zip(&host[at..]).all(|(t, c)| match t {
            Tok::Any => true,
            Tok::Lit(l) => l == c,
        });
        ok && (!self.anchor_end || at + self.toks.len() == host.len())
    }

    /// Unanchored (unless `^`) search, as Tinyproxy's regexec did.
    fn is_match(&self, host: &str) -> bool {
        let h: Vec<char> = host.chars().collect();
        let starts: Vec<usize> = if self.anchor_start {
            vec![0]
        } else {
            (0..=h.len()).collect()
        };
        starts.into_iter().any(|s| {
            if self.apex_group {
                (s == 0 && self.match_at(&h, 0))
                    || (h.get(s) == Some(&'.') && self.match_at(&h, s + 1))
            } else {
                self.match_at(&h, s)
            }
        })
    }

    fn translate(&self) -> Result<HostPattern, String> {
        let mut toks = self.toks.as_slice();
        let mut leading_dot = false;
        let mut leading_any = false;
        match toks.first() {
            Some(Tok::Lit('.')) => {
                leading_dot = true;
                toks = &toks[1..];
            }
            Some(Tok::Any) => {
                leading_any = true;
                toks = &toks[1..];
            }
            _ => {}
        }
        let domain: String = toks
            .iter()
            .map(|t| match t {
                Tok::Lit(c) => *c,
                Tok::Any => '.',
            })
            .collect();
        if self.anchor_start && (leading_dot || leading_any) {
            return Err("it requires the host to start with a dot".to_string());
        }
        let kind = if self.apex_group || leading_any {
            PatternKind::ApexAndSubdomains
        } else if leading_dot {
            PatternKind::Subdomains
        } else if self.anchor_start {
            PatternKind::Exact
        } else {
            PatternKind::ApexAndSubdomains
        };
        let prefix = match kind {
            PatternKind::Exact => "",
            PatternKind::Subdomains => "*.",
            PatternKind::ApexAndSubdomains => ".",
        };
        HostPattern::parse(&format!("{prefix}{domain}"))
            .map_err(|(_, m)| format!("the translation is not a valid pattern: {m}"))
    }

    fn examples(&self, domain: &str) -> Vec<String> {
        let mut out = vec![
            domain.to_string(),
            format!("www.{domain}"),
            format!("evil{domain}"),
            format!("{domain}.evil.net"),
            format!("www.{domain}.evil.net"),
        ];
        if self.toks.iter().skip(1).any(|t| *t == Tok::Any) {
            // `.` matched any character: github.com also matched githubxcom.
            let mut s = String::new();
            let mut replaced = false;
            let mut skipped_leading = false;
            for t in &self.toks {
                match t {
                    Tok::Lit('.') | Tok::Any if !skipped_leading && s.is_empty() => {
                        skipped_leading = true;
                    }
                    Tok::Any if !replaced => {
                        s.push('x');
                        replaced = true;
                    }
                    Tok::Any => s.push('.'),
                    Tok::Lit(c) => s.push(*c),
                }
            }
            out.push(s.clone());
            out.push(format!("{s}.evil.net"));
        }
        out.dedup();
        out
    }
}

/// Translates one line (already trimmed, not blank, not a comment).
pub fn migrate_line(line: &str) -> Outcome {
    // Already-native `*.D` (not a meaningful regex).
    if let Some(rest) = line.strip_prefix("*.")
        && !rest.contains([
            '*', '\\', '^', '$', '(', ')', '[', ']', '{', '}', '|', '+', '?',
        ])
    {
        return match HostPattern::parse(line) {
            Ok(pattern) => Outcome::Translated {
                pattern,
                changes: Vec::new(),
                notes: Vec::new(),
            },
            Err((_, m)) => Outcome::Untranslatable { why: m },
        };
    }
    if let Some(shape) = UrlLine::parse(line) {
        return shape.migrate(line);
    }
    let re = match OldRegex::parse(line) {
        Ok(re) => re,
        Err(why) => return Outcome::Untranslatable { why },
    };
    let pattern = match re.translate() {
        Ok(p) => p,
        Err(why) => return Outcome::Untranslatable { why },
    };
    let mut changes = Vec::new();
    for host in re.examples(&pattern.domain) {
        let old = re.is_match(&host);
        let new = crate::target::normalize_name(&host).is_some_and(|h| pattern.matches(&h));
        if old != new {
            let literal_dots = OldRegex {
                toks: re
                    .toks
                    .iter()
                    .map(|t| match t {
                        Tok::Any => Tok::Lit('.'),
                        lit => *lit,
                    })
                    .collect(),
                ..re
            };
            let why = if old && !literal_dots.is_match(&host) {
                format!(
                    "an unescaped `.` in the old regex {line:?} matched any character; kennel compares labels literally"
                )
            } else if old {
                format!(
                    "the old regex {line:?} was unanchored and matched inside {host:?}; kennel matches whole labels only"
                )
            } else {
                format!("kennel's {pattern} covers {host:?}; the old regex did not match it")
            };
            changes.push(Change {
                host,
                old_allowed: old,
                new_allowed: new,
                why,
            });
        }
    }
    let notes = dot_note(&re.toks, &unescaped_dots(line, 0))
        .into_iter()
        .collect();
    Outcome::Translated {
        pattern,
        changes,
        notes,
    }
}

/// 1-based columns of the unescaped `.`s in `line`, from byte `from` on (escapes are skipped).
fn unescaped_dots(line: &str, from: usize) -> Vec<usize> {
    let mut cols = Vec::new();
    let mut chars = line.char_indices();
    let mut col = 0;
    while let Some((i, c)) = chars.next() {
        col += 1;
        if c == '\\' {
            chars.next();
            col += 1;
        } else if c == '.' && i >= from {
            cols.push(col);
        }
    }
    cols
}

/// The per-line note on unescaped dots: which columns, and an example host each let through.
/// `cols` are the columns of the `Tok::Any`s of `toks`, in order.
fn dot_note(toks: &[Tok], cols: &[usize]) -> Option<String> {
    if cols.is_empty() {
        return None;
    }
    let example: String = {
        let mut replaced = false;
        toks.iter()
            .map(|t| match t {
                Tok::Any if !replaced => {
                    replaced = true;
                    'x'
                }
                Tok::Any => '.',
                Tok::Lit(c) => *c,
            })
            .collect()
    };
    let at = match cols {
        [one] => format!("the unescaped `.` at column {one}"),
        more => format!(
            "the unescaped `.`s at columns {}",
            more.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Some(format!(
        "{at} matched any character (e.g. {example}); kennel reads it as a literal dot"
    ))
}

/// Regex syntax of a URL filter line: basic (Tinyproxy's default, `FilterExtended Off`) or
/// extended (`-E`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Basic,
    Extended,
}

/// The `FilterURLs On` shape `://` + optional `(.*\.)?` + domain + `(/|$)`, matched by Tinyproxy
/// against the whole request URL.
#[derive(Debug)]
struct UrlLine {
    syntax: Syntax,
    /// Whether the optional-subdomain group `(.*\.)?` is present.
    subdomains: bool,
    /// The domain part, parsed like a host-shaped line.
    domain: OldRegex,
    /// Byte offset of the domain part in the line.
    domain_at: usize,
}

impl UrlLine {
    fn parse(line: &str) -> Option<UrlLine> {
        let rest = line.strip_prefix("://")?;
        let (syntax, rest) = if let Some(r) = rest.strip_suffix("\\(/\\|$\\)") {
            (Syntax::Basic, r)
        } else {
            (Syntax::Extended, rest.strip_suffix("(/|$)")?)
        };
        let group = match syntax {
            Syntax::Basic => "\\(.*\\.\\)?",
            Syntax::Extended => "(.*\\.)?",
        };
        let (subdomains, domain) = match rest.strip_prefix(group) {
            Some(d) => (true, d),
            None => (false, rest),
        };
        let re = OldRegex::parse(domain).ok()?;
        if re.anchor_start
            || re.anchor_end
            || re.apex_group
            || matches!(re.toks.first(), Some(Tok::Lit('.') | Tok::Any))
        {
            return None;
        }
        Some(UrlLine {
            syntax,
            subdomains,
            // `line` is "://" + `rest`, and `rest` ends with `domain`.
            domain_at: 3 + (rest.len() - domain.len()),
            domain: re,
        })
    }

    /// Whether Tinyproxy's regex matched `url` (unanchored, case-insensitive).
    fn is_match(&self, url: &str) -> bool {
        let u: Vec<char> = url.to_ascii_lowercase().chars().collect();
        let toks = &self.domain.toks;
        let domain_at = |j: usize| {
            let end = j + toks.len();
            end <= u.len()
                && toks.iter().zip(&u[j..end]).all(|(t, c)| match t {
                    Tok::Any => true,
                    Tok::Lit(l) => l == c,
                })
                && (end == u.len() || u[end] == '/')
        };
        (0..u.len().saturating_sub(2)).any(|i| {
            if u[i..i + 3] != [':', '/', '/'] {
                return false;
            }
            let after = i + 3;
            match (self.subdomains, self.syntax) {
                (false, _) => domain_at(after),
                // `(.*\.)?`: nothing, or anything ending in a dot.
                (true, Syntax::Extended) => {
                    domain_at(after)
                        || (after + 1..=u.len()).any(|j| u[j - 1] == '.' && domain_at(j))
                }
                // In basic syntax `?` is a literal character: the group, then `?`.
                (true, Syntax::Basic) => (after + 2..=u.len())
                    .any(|j| u[j - 2] == '.' && u[j - 1] == '?' && domain_at(j)),
            }
        })
    }

    fn migrate(&self, line: &str) -> Outcome {
        let domain: String = self
            .domain
            .toks
            .iter()
            .map(|t| match t {
                Tok::Lit(c) => *c,
                Tok::Any => '.',
            })
            .collect();
        let text = if self.subdomains {
            format!(".{domain}")
        } else {
            domain.clone()
        };
        let pattern = match HostPattern::parse(&text) {
            Ok(p) => p,
            Err((_, m)) => {
                return Outcome::Untranslatable {
                    why: format!("the translation is not a valid pattern: {m}"),
                };
            }
        };
        let d = &pattern.domain;
        let mut changes = Vec::new();
        for url in [
            format!("http://{d}/"),
            format!("http://www.{d}/"),
            format!("http://evil{d}/"),
            format!("http://{d}.evil.example/"),
            format!("http://evil.example/x.{d}/"),
            format!("http://evil.example/?next=http://{d}/"),
        ] {
            let host = url
                .trim_start_matches("http://")
                .split(['/', '?'])
                .next()
                .unwrap_or_default();
            let old = self.is_match(&url);
            let new = crate::target::normalize_name(host).is_some_and(|h| pattern.matches(&h));
            if old == new {
                continue;
            }
            let why = if old {
                format!(
                    "the old URL filter `{line}` matched inside the path or query of a request to {host}; kennel decides on the host only"
                )
            } else if self.syntax == Syntax::Basic && self.subdomains {
                format!(
                    "in basic regex syntax `?` is a literal character, so the old line `{line}` did not match this URL; kennel allows what the line was meant to allow"
                )
            } else {
                format!("kennel's {pattern} covers {host:?}; the old URL filter did not match it")
            };
            changes.push(Change {
                host: url,
                old_allowed: old,
                new_allowed: new,
                why,
            });
        }
        let mut notes = vec![
            "a URL filter line (FilterURLs On): Tinyproxy matched it against the whole request URL; kennel decides on the host and port only".to_string(),
        ];
        if self.syntax == Syntax::Basic && self.subdomains {
            notes.push(format!(
                "in basic regex syntax (Tinyproxy's default, FilterExtended Off) `?` is a literal character: as Tinyproxy compiled this line it matched only URLs containing the text `.?{d}`, not requests to {d} or its subdomains; translated as it was meant, `(.*\\.)?` = any subdomain"
            ));
        }
        if let Some(n) = dot_note(&self.domain.toks, &unescaped_dots(line, self.domain_at)) {
            notes.push(n);
        }
        Outcome::Translated {
            pattern,
            changes,
            notes,
        }
    }
}

/// Translates a seed list or Tinyproxy filter file.
pub fn migrate(src: &str) -> Migration {
    let mut lines = Vec::new();
    for (n, raw) in src.lines().enumerate() {
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        lines.push(MigratedLine {
            line: u32::try_from(n + 1).unwrap_or(u32::MAX),
            original: entry.to_string(),
            outcome: migrate_line(entry),
        });
    }
    Migration { lines }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(line: &str) -> (String, Vec<String>) {
        match migrate_line(line) {
            Outcome::Translated {
                pattern, changes, ..
            } => (
                pattern.to_string(),
                changes.into_iter().map(|c| c.host).collect(),
            ),
            Outcome::Untranslatable { why } => panic!("{line}: {why}"),
        }
    }

    #[test]
    fn shapes_table() {
        let table: &[(&str, &str, &[&str])] = &[
            (
                "github.com",
                ".github.com",
                &[
                    "evilgithub.com",
                    "github.com.evil.net",
                    "www.github.com.evil.net",
                    "githubxcom",
                    "githubxcom.evil.net",
                ],
            ),
            ("\\.cloudfront\\.net$", "*.cloudfront.net", &[]),
            (
                "\\.cloudfront\\.net",
                "*.cloudfront.net",
                &["www.cloudfront.net.evil.net"],
            ),
            ("^github\\.com$", "github.com", &[]),
            ("^github\\.com", "github.com", &["github.com.evil.net"]),
            ("github\\.com$", ".github.com", &["evilgithub.com"]),
            ("(^|\\.)github\\.com$", ".github.com", &[]),
            ("*.example.com", "*.example.com", &[]),
            (
                "GitHub.com",
                ".github.com",
                &[
                    "evilgithub.com",
                    "github.com.evil.net",
                    "www.github.com.evil.net",
                    "githubxcom",
                    "githubxcom.evil.net",
                ],
            ),
        ];
        for (line, pat, changes) in table {
            let (p, c) = translated(line);
            assert_eq!(&p, pat, "{line}");
            assert_eq!(
                c,
                changes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{line}"
            );
        }
    }

    #[test]
    fn untranslatable_lines_are_listed() {
        for line in [
            "^(foo|bar)\\.com$",
            "[a-z]+\\.example\\.com",
            "example\\.(com|net)",
            ".*",
            "^\\.x\\.com",
        ] {
            assert!(
                matches!(migrate_line(line), Outcome::Untranslatable { .. }),
                "{line}"
            );
        }
        let m = migrate("# c\n\ngithub.com\n^(a|b)\\.com$\n");
        assert_eq!(m.lines.len(), 2);
        assert_eq!(
            m.untranslatable().map(|l| l.line).collect::<Vec<_>>(),
            vec![4]
        );
        assert_eq!(
            m.patterns().map(|p| p.to_string()).collect::<Vec<_>>(),
            vec![".github.com"]
        );
    }

    fn notes(line: &str) -> Vec<String> {
        match migrate_line(line) {
            Outcome::Translated { notes, .. } => notes,
            Outcome::Untranslatable { why } => panic!("{line}: {why}"),
        }
    }

    /// Issue 9 item 9: the URL filter line Tinyproxy's setup wrote with `FilterURLs On`, in
    /// basic-regex syntax and in its `-E` spelling, was reported as untranslatable.
    #[test]
    fn url_filter_line_with_optional_subdomain_group_translates() {
        for line in [
            "://\\(.*\\.\\)?gitlab\\.com\\(/\\|$\\)",
            "://(.*\\.)?gitlab\\.com(/|$)",
        ] {
            let (p, _) = translated(line);
            assert_eq!(p, ".gitlab.com", "{line}");
        }
        for line in ["://gitlab\\.com\\(/\\|$\\)", "://gitlab\\.com(/|$)"] {
            let (p, _) = translated(line);
            assert_eq!(p, "gitlab.com", "{line}");
        }
        // The ERE spelling: `.*` also ran across the host into the path.
        let (_, changes) = translated("://(.*\\.)?gitlab\\.com(/|$)");
        assert_eq!(
            changes,
            [
                "http://evil.example/x.gitlab.com/",
                "http://evil.example/?next=http://gitlab.com/"
            ]
        );
        // In basic syntax `?` is a literal character: as Tinyproxy compiled it, the line matched
        // no real gitlab URL, which the report says.
        let (_, changes) = translated("://\\(.*\\.\\)?gitlab\\.com\\(/\\|$\\)");
        assert_eq!(
            changes,
            ["http://gitlab.com/", "http://www.gitlab.com/"],
            "basic-regex `?` is literal"
        );
        let n = notes("://\\(.*\\.\\)?gitlab\\.com\\(/\\|$\\)").join("\n");
        assert!(n.contains("`?` is a literal character"), "{n}");
        // Other URL-ish shapes stay untranslatable rather than guessed.
        for line in [
            "://(.*\\.)?gitlab\\.com",
            "^https?://(.*\\.)?gitlab\\.com(/|$)",
            "://(a|b)\\.com(/|$)",
        ] {
            assert!(
                matches!(migrate_line(line), Outcome::Untranslatable { .. }),
                "{line}"
            );
        }
    }

    /// Issue 9 item 9: the report said `.` matched any character for every line; only an
    /// unescaped `.` did, and the report now says which, per line.
    #[test]
    fn dot_note_names_the_unescaped_dots_of_each_line() {
        assert_eq!(
            notes("api.github\\.com"),
            [
                "the unescaped `.` at column 4 matched any character (e.g. apixgithub.com); kennel reads it as a literal dot"
            ]
        );
        assert_eq!(
            notes("github.com"),
            [
                "the unescaped `.` at column 7 matched any character (e.g. githubxcom); kennel reads it as a literal dot"
            ]
        );
        assert!(notes("\\.cloudfront\\.net$").is_empty());
        assert!(notes("^github\\.com$").is_empty());
        assert!(notes("*.example.com").is_empty(), "native, not a regex");
        let (_, changes) = translated("\\.cloudfront\\.net");
        assert!(!changes.iter().any(|h| h.contains('x')), "{changes:?}");
    }
}
