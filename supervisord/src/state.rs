//! The daemon's state directory: per environment `envs/<name>/spec.json` (what was asked for) and
//! `envs/<name>/policy/` (the effective policy directory, mounted read-only into the proxy).
//!
//! The directory is outside every sandbox's reach (mode 0700, owned by the daemon). Creating
//! `envs/<name>` is the atomic name reservation that makes concurrent creates safe;
//! `envs/<name>/creating` marks a creation that has not finished (a daemon killed in the middle
//! finds it at start and removes what was made); `envs/<name>/stopped` marks an environment the
//! person stopped (`kennel stop`), which a reconcile leaves stopped. `events.jsonl` is the event log
//! ([`crate::events`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::types::CreateEnv;

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted (`create`, `read`, `write`, `remove`).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A `spec.json` does not parse.
    #[error("{} is corrupt: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The environment's directory already exists (an environment of that name exists or is being
    /// created).
    #[error("environment {0:?} already has state")]
    Exists(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the daemon keeps about one environment (`spec.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvRecord {
    /// Environment name.
    pub name: String,
    /// The create request as received (spec + imported whitelist).
    pub request: CreateEnv,
    /// Uid of the caller that created it.
    pub created_by_uid: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The proxy image the environment was created with.
    pub proxy_image: String,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    instance: String,
}

/// Name of the per-environment spec file.
pub const SPEC_JSON: &str = "spec.json";
/// Name of the per-environment marker of a creation in progress.
pub const CREATING: &str = "creating";
/// Name of the per-environment marker of `kennel stop`: the containers are meant to be stopped,
/// so a reconcile does not start them again.
pub const STOPPED: &str = "stopped";

/// What `envs/<name>/creating` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creating {
    /// The home volume existed before the creation (it is not the creation's to remove).
    pub kept_home: bool,
}

impl StateDir {
    /// Opens (creating if needed) the state directory at `root`; `root` is made mode 0700.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        use std::os::unix::fs::PermissionsExt;
        let envs = root.join("envs");
        std::fs::create_dir_all(&envs).map_err(io("create", &envs))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", root))?;
        let instance = instance_id(root)?;
        Ok(StateDir {
            root: root.to_path_buf(),
            instance,
        })
    }

    /// This state directory's instance id (random, made on first use, kept in `instance-id`).
    /// The daemon labels its objects with it, so it never touches objects another daemon or a
    /// test created.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The state directory's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `envs/<name>`. `name` must already be validated (`validate_env_name`).
    pub fn env_dir(&self, name: &str) -> PathBuf {
        self.root.join("envs").join(name)
    }

    /// `envs/<name>/policy`: the effective policy directory.
    pub fn policy_dir(&self, name: &str) -> PathBuf {
        self.env_dir(name).join("policy")
    }

    /// Atomically reserves `name` by creating its directory. The reservation is released (the
    /// directory removed) when the guard drops, unless [`Reservation::commit`] was called.
    pub fn reserve(&self, name: &str) -> Result<Reservation, StateError> {
        let dir = self.env_dir(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(Reservation {
                dir,
                committed: false,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(name.to_string()))
            }
            Err(e) => Err(io("create", &dir)(e)),
        }
    }

    /// Writes `envs/<name>/spec.json` atomically (temp file + rename).
    pub fn write_record(&self, rec: &EnvRecord) -> Result<(), StateError> {
        let path = self.env_dir(&rec.name).join(SPEC_JSON);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(rec).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let written = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(&body).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("rename", &path))
        })();
        if written.is_err() {
            // A full disk (or any failure) leaves the old record in place and no partial
            // temporary file behind.
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Reads `envs/<name>/spec.json`; `None` if the environment has no record.
    pub fn read_record(&self, name: &str) -> Result<Option<EnvRecord>, StateError> {
        let path = self.env_dir(name).join(SPEC_JSON);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt { path, source })
    }

    /// Names of every environment directory (with or without a record).
    pub fn names(&self) -> Result<Vec<String>, StateError> {
        let envs = self.root.join("envs");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&envs).map_err(io("read", &envs))? {
            let entry = entry.map_err(io("read", &envs))?;
            let is_dir = entry
                .file_type()
                .map_err(io("read", &entry.path()))?
                .is_dir();
            if is_dir && let Some(n) = entry.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Writes `envs/<name>/creating`: the creation has begun and is not done. `kept_home`
    /// says the home volume existed before (kept by `kennel down`), so an interrupted creation
    /// must not remove it.
    pub fn mark_creating(&self, name: &str, kept_home: bool) -> Result<(), StateError> {
        let path = self.env_dir(name).join(CREATING);
        let body =
            serde_json::to_vec(&Creating { kept_home }).map_err(|source| StateError::Corrupt {
                path: path.clone(),
                source,
            })?;
        let mut f = std::fs::File::create(&path).map_err(io("create", &path))?;
        f.write_all(&body)
            .and_then(|()| f.sync_all())
            .map_err(io("write", &path))
    }

    /// Removes the [`StateDir::mark_creating`] marker: the environment exists.
    pub fn creation_done(&self, name: &str) -> Result<(), StateError> {
        let path = self.env_dir(name).join(CREATING);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// The marker of a creation of `name` that has not finished, if there is one. A marker
    /// that does not parse (torn by a crash while written) counts as a creation that made no
    /// home volume of its own… unless one was kept: so it reads as `kept_home = true`, which
    /// never removes a home.
    pub fn creating(&self, name: &str) -> Result<Option<Creating>, StateError> {
        let path = self.env_dir(name).join(CREATING);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).unwrap_or(Creating { kept_home: true }),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Writes `envs/<name>/stopped`: the person stopped the environment (`kennel stop`).
    pub fn mark_stopped(&self, name: &str) -> Result<(), StateError> {
        let path = self.env_dir(name).join(STOPPED);
        std::fs::File::create(&path)
            .and_then(|f| f.sync_all())
            .map_err(io("create", &path))
    }

    /// Removes the [`StateDir::mark_stopped`] marker: the environment is meant to run.
    pub fn clear_stopped(&self, name: &str) -> Result<(), StateError> {
        let path = self.env_dir(name).join(STOPPED);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// Whether the person stopped `name` ([`StateDir::mark_stopped`]).
    pub fn stopped(&self, name: &str) -> Result<bool, StateError> {
        let path = self.env_dir(name).join(STOPPED);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Removes `envs/<name>` and everything in it; absent is fine.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let dir = self.env_dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &dir)(e)),
        }
    }
}

/// Reads `root/instance-id`, creating it with 16 random hex digits if missing.
fn instance_id(root: &Path) -> Result<String, StateError> {
    use std::io::Read;
    let path = root.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &path)(e)),
    }
    let mut bytes = [0u8; 8];
    let urandom = Path::new("/dev/urandom");
    std::fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read", urandom))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, format!("{id}\n")).map_err(io("write", &path))?;
    Ok(id)
}

/// A reserved environment name (see [`StateDir::reserve`]).
#[derive(Debug)]
pub struct Reservation {
    dir: PathBuf,
    committed: bool,
}

impl Reservation {
    /// Keeps the directory: the environment now exists.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot release a failed environment's state");
        }
    }
}
