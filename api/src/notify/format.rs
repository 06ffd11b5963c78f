//! The notification file format, parsed as untrusted input (the sandbox writes these files).
//!
//! ```text
//! kennel-notify/1 LEVEL\n
//! MESSAGE (the rest of the file, UTF-8, may span lines)
//! ```
//!
//! `LEVEL` is `error`, `complete` or `clarification`. The whole file is at most
//! [`MAX_FILE_BYTES`]; the message is cleaned by [`sanitize`] (control characters, terminal
//! escape sequences and bidirectional overrides removed) and cut at [`MAX_MESSAGE_CHARS`].
//!
//! This module uses only `std`: the fuzz target `notify_file` includes it by path.

use std::fmt;

/// The first token of every notification file.
pub const MAGIC: &str = "kennel-notify/1";
/// Largest notification file read; bigger files are refused unread.
pub const MAX_FILE_BYTES: u64 = 4096;
/// Longest message kept (characters, after cleaning); longer ones end in `…`.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// How urgent a notification is; the sandbox chooses one of the first three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// The agent hit an error it cannot get past.
    Error,
    /// The agent finished its task.
    Complete,
    /// The agent waits for the person's answer.
    Clarification,
    /// Written by kennel itself (a rate-limit summary, a denial burst); never from a file.
    Info,
}

impl Level {
    /// The level's name as written in files and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Complete => "complete",
            Level::Clarification => "clarification",
            Level::Info => "info",
        }
    }

    /// A level a notification file may name (`info` is kennel's own and refused).
    pub fn from_file(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "complete" => Some(Level::Complete),
            "clarification" => Some(Level::Clarification),
            _ => None,
        }
    }
}

/// Why a notification file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Bigger than [`MAX_FILE_BYTES`].
    TooLarge {
        /// Its size (at least; reading stops past the cap).
        bytes: u64,
    },
    /// Not valid UTF-8.
    NotUtf8,
    /// The first line is not `kennel-notify/1 LEVEL`.
    BadHeader,
    /// The header names a level that is not `error`, `complete` or `clarification`.
    UnknownLevel,
    /// Nothing is left of the message after cleaning.
    EmptyMessage,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::TooLarge { bytes } => write!(
                f,
                "{bytes} bytes, more than the {MAX_FILE_BYTES}-byte limit"
            ),
            FormatError::NotUtf8 => f.write_str("not UTF-8"),
            FormatError::BadHeader => write!(f, "the first line is not `{MAGIC} LEVEL`"),
            FormatError::UnknownLevel => {
                f.write_str("unknown level (error, complete or clarification)")
            }
            FormatError::EmptyMessage => f.write_str("empty message"),
        }
    }
}

impl std::error::Error for FormatError {}

/// A parsed, cleaned notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Its level (never [`Level::Info`]).
    pub level: Level,
    /// The cleaned message: no control characters but `\n`, no escape sequences, at most
    /// [`MAX_MESSAGE_CHARS`] characters, not empty.
    pub message: String,
}

/// Parses one notification file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Parsed, FormatError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FormatError::TooLarge {
            bytes: bytes.len() as u64,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| FormatError::NotUtf8)?;
    let (header, body) = text.split_once('\n').unwrap_or((text, ""));
    let header = header.strip_suffix('\r').unwrap_or(header);
    let mut words = header.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(FormatError::BadHeader);
    }
    let (Some(level), None) = (words.next(), words.next()) else {
        return Err(FormatError::BadHeader);
    };
    let level = Level::from_file(level).ok_or(FormatError::UnknownLevel)?;
    let message = sanitize(body);
    if message.is_empty() {
        return Err(FormatError::EmptyMessage);
    }
    Ok(Parsed { level, message })
}

/// Cleans untrusted text for a desktop notification or a terminal line: escape sequences (CSI,
/// OSC, DCS/SOS/PM/APC strings and two-character escapes) are removed whole, every other
/// control character (C0 but `\n`, DEL, C1) and the bidirectional overrides are removed, tabs
/// become spaces; lines are trimmed, runs of blank lines collapse, and the result is cut at
/// [`MAX_MESSAGE_CHARS`].
pub fn sanitize(input: &str) -> String {
    let mut out = String::with_capacity(input.len().min(MAX_MESSAGE_CHARS * 4));
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => skip_escape(&mut chars),
            '\n' => out.push('\n'),
            '\t' => out.push(' '),
            c if is_stripped(c) => {}
            c => out.push(c),
        }
    }
    let mut lines: Vec<&str> = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty() && lines.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        lines.push(line);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let joined = lines.join("\n");
    if joined.chars().count() <= MAX_MESSAGE_CHARS {
        return joined;
    }
    let mut cut: String = joined.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Characters removed outright: control characters (C0, DEL, C1), bidirectional embeddings,
/// overrides and isolates (they reorder what a person reads), and the line/paragraph separators.
fn is_stripped(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{2028}' | '\u{2029}')
}

/// Skips the rest of an escape sequence whose `ESC` was just read.
fn skip_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match chars.next() {
        // CSI: parameters and intermediates, then one final byte 0x40..=0x7e.
        Some('[') => {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
        // OSC, DCS, SOS, PM, APC: a string ended by BEL or ST (`ESC \`).
        Some(']' | 'P' | 'X' | '^' | '_') => {
            while let Some(c) = chars.next() {
                if c == '\u{07}' {
                    break;
                }
                if c == '\u{1b}' {
                    if chars.peek() == Some(&'\\') {
                        chars.next();
                    }
                    break;
                }
            }
        }
        // nF escapes: intermediates 0x20..=0x2f, then one final byte.
        Some(c) if ('\u{20}'..='\u{2f}').contains(&c) => {
            while let Some(&n) = chars.peek() {
                chars.next();
                if !('\u{20}'..='\u{2f}').contains(&n) {
                    break;
                }
            }
        }
        // Any other two-character escape (`ESC c`, `ESC 7` …) or a lone ESC at the end.
        _ => {}
    }
}
