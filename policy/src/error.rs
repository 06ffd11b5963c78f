//! Error types: [`PolicyError`] for policy sources, [`TargetError`] for request targets.

use std::path::{Path, PathBuf};

/// An error while loading or validating a policy.
///
/// `Display` is `FILE:LINE:COL: what is wrong; what was expected` for errors inside a policy
/// file, list file or legacy variable, and a plain message naming the file for I/O errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file could not be read (missing, permissions, not UTF-8).
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Something inside a file (or a legacy variable) is wrong at a known position.
    #[error("{}:{line}:{col}: {message}", file.display())]
    Located {
        /// The file (or `$VARIABLE` for legacy environment variables).
        file: PathBuf,
        /// 1-based line.
        line: u32,
        /// 1-based column (in characters).
        col: u32,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A credentials source named by the policy is unusable (e.g. unset environment variable).
    #[error("{}:{line}:{col}: {message}", file.display())]
    Credentials {
        /// The policy file naming the credentials.
        file: PathBuf,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        col: u32,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    /// The file, line and column the error points at, when it has a position.
    pub fn location(&self) -> Option<(&Path, u32, u32)> {
        match self {
            PolicyError::Located {
                file, line, col, ..
            }
            | PolicyError::Credentials {
                file, line, col, ..
            } => Some((file.as_path(), *line, *col)),
            PolicyError::Io { .. } => None,
        }
    }

    pub(crate) fn at(file: &Path, src: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, col) = line_col(src, offset);
        PolicyError::Located {
            file: file.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        PolicyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
pub(crate) fn line_col(src: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(src.len());
    let mut start = offset;
    while !src.is_char_boundary(start) {
        start -= 1;
    }
    let before = &src[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(col).unwrap_or(u32::MAX),
    )
}

/// Why a request target (CONNECT authority, absolute URI, Host header) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The host part is empty.
    #[error("empty host")]
    EmptyHost,
    /// The target carries `user@` information, which could hide the real host.
    #[error("userinfo (`user@host`) is not allowed in a target")]
    Userinfo,
    /// The host contains percent-encoding.
    #[error("percent-encoded host is not allowed")]
    PercentEncoded,
    /// The host contains a character no host name can contain.
    #[error("invalid character {0:?} in host")]
    InvalidChar(char),
    /// The host is not a valid domain name (IDNA or length rules).
    #[error("invalid host name {0:?}")]
    InvalidName(String),
    /// The host ends in a number but is not a valid IPv4 address.
    #[error("invalid IPv4 address {0:?}")]
    InvalidIpv4(String),
    /// A bracketed host is not a valid IPv6 address.
    #[error("invalid IPv6 address {0:?}")]
    InvalidIpv6(String),
    /// A CONNECT authority without a port.
    #[error("missing port (expected host:port)")]
    MissingPort,
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?} (expected 1-65535)")]
    InvalidPort(String),
    /// The URI scheme is not `http` or `https`.
    #[error("unsupported scheme {0:?} (expected http or https)")]
    UnsupportedScheme(String),
    /// The request target is not an absolute `http://` / `https://` URI.
    #[error("not an absolute URI (expected http://host[:port]/path)")]
    NotAbsolute,
    /// The authority contains a fragment or other misplaced delimiter.
    #[error("malformed authority {0:?}")]
    MalformedAuthority(String),
}
