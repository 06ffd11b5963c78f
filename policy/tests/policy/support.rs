//! Helpers: policy directories in a tempdir.

use std::path::{Path, PathBuf};

use kennel_policy::{Decision, Policy, Target};

/// A temporary directory holding a policy and its lists.
pub struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).expect("write");
        p
    }

    /// Writes via a temporary file and rename, as editors do.
    pub fn replace(&self, name: &str, content: &str) -> PathBuf {
        let tmp = self.path(&format!("{name}.tmp~"));
        std::fs::write(&tmp, content).expect("write tmp");
        let p = self.path(name);
        std::fs::rename(&tmp, &p).expect("rename");
        p
    }

    pub fn load(&self, name: &str) -> Policy {
        Policy::load(&self.path(name)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error message, with the temp dir prefix replaced by `DIR`.
    pub fn err(&self, toml: &str) -> String {
        let p = self.write("policy.toml", toml);
        match Policy::load(&p) {
            Ok(_) => panic!("expected an error for:\n{toml}"),
            Err(e) => self.strip(&e.to_string()),
        }
    }

    pub fn strip(&self, s: &str) -> String {
        s.replace(&format!("{}/", self.dir.path().display()), "")
    }
}

pub fn target(s: &str) -> Target {
    Target::parse_authority(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn decide(p: &Policy, s: &str) -> Decision {
    p.decide(&target(s))
}

pub fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}
