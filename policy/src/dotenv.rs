//! The `.env` line format, read in one place: the legacy upstream variables
//! ([`crate::LegacyEnv::parse_dotenv`]) and the sandbox's `env_file`s (kennel-container) both
//! use it, so the two readers cannot disagree on what a line means.
//!
//! A line is blank, a `#` comment, or `[export ]KEY=VALUE`; a value in matching double or single
//! quotes is taken as is, an unquoted one ends at an inline comment (` #`).

/// One `KEY=VALUE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The name, trimmed.
    pub key: &'a str,
    /// The value: unquoted, or up to an inline comment and trimmed.
    pub value: String,
    /// Whether the value was quoted.
    pub quoted: bool,
    /// Byte offset in the text of the value's first character (inside the quotes).
    pub value_offset: usize,
}

/// A line that is not `KEY=VALUE`, nor blank, nor a comment. Its text is deliberately not
/// kept: a broken line of a `.env` file may hold a secret, and errors end up in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotKeyValue {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset in the text of the line's first non-blank character.
    pub offset: usize,
}

/// The entries of `.env` text, in order; the first malformed line ends the iteration with an
/// error.
pub fn entries(src: &str) -> impl Iterator<Item = Result<Entry<'_>, NotKeyValue>> + '_ {
    let mut offset = 0;
    let mut failed = false;
    src.split_inclusive('\n')
        .enumerate()
        .filter_map(move |(i, line)| {
            if failed {
                return None;
            }
            let start = offset;
            offset += line.len();
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                return None;
            }
            let body = trimmed
                .strip_prefix("export ")
                .unwrap_or(trimmed)
                .trim_start();
            let Some((key, value)) = body.split_once('=') else {
                failed = true;
                return Some(Err(NotKeyValue {
                    line: i + 1,
                    offset: start + (line.len() - line.trim_start().len()),
                }));
            };
            let raw = value.trim();
            let (value, quoted) = match raw
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| raw.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            {
                Some(v) => (v.to_string(), true),
                None => match raw.find(" #") {
                    Some(at) => (raw[..at].trim_end().to_string(), false),
                    None => (raw.to_string(), false),
                },
            };
            // `raw` is a subslice of `line`, which starts at byte `start` of `src`.
            let raw_at = start + (raw.as_ptr() as usize - line.as_ptr() as usize);
            Some(Ok(Entry {
                key: key.trim(),
                value,
                quoted,
                value_offset: raw_at + usize::from(quoted),
            }))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_quotes_comments_and_offsets() {
        let src = "# c\n\nexport A=1\nB = \"two # not a comment\"\nC='x' \nD=v # comment\n";
        let got: Vec<_> = entries(src).map(|e| e.expect("entry")).collect();
        let kv: Vec<_> = got
            .iter()
            .map(|e| (e.key, e.value.as_str(), e.quoted))
            .collect();
        assert_eq!(
            kv,
            [
                ("A", "1", false),
                ("B", "two # not a comment", true),
                ("C", "x", true),
                ("D", "v", false)
            ]
        );
        assert_eq!(&src[got[1].value_offset..][..3], "two");
    }

    #[test]
    fn a_broken_line_is_located_and_ends_the_entries() {
        let src = "A=1\r\n  secret-without-equals\nB=2\n";
        let got: Vec<_> = entries(src).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], Err(NotKeyValue { line: 2, offset: 7 }));
    }
}
