//! The files one policy build read (or tried to read), each with a digest of what it got. The
//! reloader compares them with what the files hold now, so that only a change of a policy
//! source reloads: a log file or anything else written in a watched directory does not, and
//! neither does re-saving a file with the same content. A failed build's inputs include the
//! file it could not read, so creating a missing include is a change.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What reading one file gave.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// SHA-256 of the bytes read.
    Read([u8; 32]),
    /// Reading failed with this kind of error (missing, permissions …).
    Failed(io::ErrorKind),
}

fn state_of(r: &io::Result<Vec<u8>>) -> State {
    match r {
        Ok(bytes) => State::Read(Sha256::digest(bytes).into()),
        Err(e) => State::Failed(e.kind()),
    }
}

/// The files a build read, in order, with what each gave.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inputs {
    files: Vec<(PathBuf, State)>,
}

impl Inputs {
    /// Reads `path` as UTF-8 text and records what was read (also when reading fails).
    pub(crate) fn read_to_string(&mut self, path: &Path) -> io::Result<String> {
        let read = std::fs::read(path);
        let state = state_of(&read);
        // A file read twice in one build (named by two includes) is recorded once: the first
        // read is what the build saw first, and any later difference shows up as a change.
        if !self.files.iter().any(|(p, _)| p == path) {
            self.files.push((path.to_path_buf(), state));
        }
        String::from_utf8(read?).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    }

    /// True when any recorded file now reads differently (other content, or readable where it
    /// failed, or failing where it was read).
    pub(crate) fn changed(&self) -> bool {
        self.files
            .iter()
            .any(|(path, was)| state_of(&std::fs::read(path)) != *was)
    }

    /// The recorded files.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }
}
