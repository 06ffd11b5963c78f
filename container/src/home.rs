//! The sandbox's home directory: a named volume per environment (agent logins and settings
//! survive `down`/`up` and refresh), initialised once at creation by unpacking a tar archive into
//! it: the home directory itself owned by the sandbox user, and copies of the host paths listed in
//! `[credentials] agent_config_copy` (copied, never mounted read-write, so the agent writes its own
//! copy and the host's stays untouched).

use std::io::Read;
use std::path::{Path, PathBuf};

/// At most this many bytes are copied from the host into a new home.
pub const MAX_COPY_BYTES: u64 = 512 * 1024 * 1024;
/// At most this many files and directories are copied from the host into a new home.
pub const MAX_COPY_ENTRIES: usize = 100_000;

/// Errors preparing a home's initial content.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// A host path could not be read.
    #[error("cannot copy {} into the home volume: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A path to copy belongs to someone else than the caller the copy is made for.
    #[error(
        "{} is owned by uid {owner}, not by the caller (uid {caller}); kennel copies only the caller's files into a home",
        path.display()
    )]
    NotYours {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The caller.
        caller: u32,
    },
    /// The copy would be too large.
    #[error(
        "{} is too large to copy into the home volume (more than {limit}); list smaller paths in `credentials.agent_config_copy`",
        path.display()
    )]
    TooLarge {
        /// The path being copied when the limit was hit.
        path: PathBuf,
        /// The limit, human-readable.
        limit: String,
    },
}

/// Builds the archive that initialises a home: unpacked in the home's **parent** directory
/// (the engine applies a directory entry's owner to an existing directory, but skips `.`), it
/// makes `home` owned by `uid:gid` (mode 0750) and puts a copy of each of `copies` at
/// `home/<file name>`, everything owned by `uid:gid`. Symlinks are copied as links (not followed);
/// sockets and devices are skipped; set-id bits are dropped.
///
/// `only_owner`: when `Some(uid)`, every directory and file read must belong to that uid (checked
/// on the opened file, which is opened without following a link), so a daemon running as root
/// copies nothing its caller could not read, even if the caller swaps a path after the daemon's
/// check.
pub fn init_archive(
    home: &str,
    uid: u32,
    gid: u32,
    copies: &[PathBuf],
    only_owner: Option<u32>,
) -> Result<Vec<u8>, HomeError> {
    let base = Path::new(home)
        .file_name()
        .map(|f| PathBuf::from(f.to_os_string()))
        .unwrap_or_else(|| PathBuf::from("home"));
    let mut b = tar::Builder::new(Vec::new());
    let mut budget = Budget {
        bytes: 0,
        entries: 0,
        only_owner,
    };
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HomeError::Read { path, source }
    };
    append_dir(&mut b, &base, 0o750, uid, gid).map_err(read(Path::new(home)))?;
    for src in copies {
        let Some(name) = src.file_name() else {
            continue;
        };
        copy_tree(&mut b, src, &base.join(name), uid, gid, &mut budget)?;
    }
    b.into_inner().map_err(read(Path::new(home)))
}

struct Budget {
    bytes: u64,
    entries: usize,
    only_owner: Option<u32>,
}

impl Budget {
    fn check_owner(&self, path: &Path, meta: &std::fs::Metadata) -> Result<(), HomeError> {
        use std::os::unix::fs::MetadataExt;
        match self.only_owner {
            Some(caller) if meta.uid() != caller => Err(HomeError::NotYours {
                path: path.to_path_buf(),
                owner: meta.uid(),
                caller,
            }),
            _ => Ok(()),
        }
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o777);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_size(size);
    h.set_mtime(0);
    h
}

fn append_dir(
    b: &mut tar::Builder<Vec<u8>>,
    path: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, uid, gid, 0);
    b.append_data(&mut h, path, std::io::empty())
}

fn copy_tree(
    b: &mut tar::Builder<Vec<u8>>,
    src: &Path,
    dst: &Path,
    uid: u32,
    gid: u32,
    budget: &mut Budget,
) -> Result<(), HomeError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| HomeError::Read {
        path: src.to_path_buf(),
        source,
    };
    budget.entries += 1;
    if budget.entries > MAX_COPY_ENTRIES {
        return Err(HomeError::TooLarge {
            path: src.to_path_buf(),
            limit: format!("{MAX_COPY_ENTRIES} files"),
        });
    }
    let meta = std::fs::symlink_metadata(src).map_err(err)?;
    let mode = meta.permissions().mode();
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(err)?;
        let mut h = header(tar::EntryType::Symlink, 0o777, uid, gid, 0);
        b.append_link(&mut h, dst, &target).map_err(err)?;
    } else if ft.is_dir() {
        budget.check_owner(src, &meta)?;
        append_dir(b, dst, mode | 0o700, uid, gid).map_err(err)?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            copy_tree(b, &e.path(), &dst.join(e.file_name()), uid, gid, budget)?;
        }
    } else if ft.is_file() {
        budget.bytes += meta.len();
        if budget.bytes > MAX_COPY_BYTES {
            return Err(HomeError::TooLarge {
                path: src.to_path_buf(),
                limit: format!("{} MiB", MAX_COPY_BYTES >> 20),
            });
        }
        // Opened without following a link, and checked on what was opened (not on the path,
        // which may have changed since the lstat above).
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(src)
            .map_err(err)?;
        let opened = f.metadata().map_err(err)?;
        if !opened.is_file() {
            return Err(HomeError::Read {
                path: src.to_path_buf(),
                source: std::io::Error::other("changed while being copied"),
            });
        }
        budget.check_owner(src, &opened)?;
        let mut h = header(
            tar::EntryType::Regular,
            mode | 0o600,
            uid,
            gid,
            opened.len(),
        );
        b.append_data(&mut h, dst, f.take(opened.len()))
            .map_err(err)?;
    }
    // Sockets, FIFOs and devices are not configuration; skipped.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_owns_home_and_copies_trees_without_following_links() {
        let d = tempfile::tempdir().expect("tmp");
        let claude = d.path().join(".claude");
        std::fs::create_dir_all(claude.join("sub")).expect("mkdir");
        std::fs::write(claude.join("sub/settings.json"), "{}").expect("w");
        std::os::unix::fs::symlink("/etc/shadow", claude.join("link")).expect("ln");
        let tar = init_archive(
            "/home/claude",
            1001,
            2000,
            std::slice::from_ref(&claude),
            None,
        )
        .expect("archive");
        // For a caller that does not own them, nothing is read.
        let e = init_archive(
            "/home/claude",
            1001,
            2000,
            std::slice::from_ref(&claude),
            Some(4242),
        )
        .expect_err("not the caller's");
        assert!(
            e.to_string().contains("not by the caller (uid 4242)"),
            "{e}"
        );
        let mut a = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for e in a.entries().expect("entries") {
            let e = e.expect("entry");
            let h = e.header();
            assert_eq!((h.uid().expect("uid"), h.gid().expect("gid")), (1001, 2000));
            seen.push((
                e.path().expect("path").display().to_string(),
                h.entry_type(),
            ));
        }
        assert_eq!(seen[0], ("claude".to_string(), tar::EntryType::Directory));
        assert!(seen.contains(&("claude/.claude/link".into(), tar::EntryType::Symlink)));
        assert!(seen.contains(&(
            "claude/.claude/sub/settings.json".into(),
            tar::EntryType::Regular
        )));
    }
}
