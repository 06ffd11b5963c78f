//! Git in the sandbox: make a worktree's (or plain repository's) git directory reachable at the
//! path git expects, and mount read-only everything in it that git on the **host** would later
//! execute or follow (docs/environments.md, "Git").
//!
//! The threat: the workspace and the git directory are writable by the sandbox, and the person
//! runs `git` on the host in the same checkout afterwards. Git runs `hooks/*`, obeys
//! `core.fsmonitor`, `core.hooksPath`, `core.sshCommand`, filter drivers … from `config` and
//! `config.worktree`, and follows the `gitdir:` line of a worktree's `.git` file and the
//! `commondir` file of its admin directory. If the sandbox could write any of those, its next
//! host `git status` would run the agent's code as the person. So those paths are bind-mounted
//! read-only over the writable mounts; everything else git writes (objects, refs, index, HEAD,
//! logs) stays writable, so commits and branches work.

use std::path::{Component, Path, PathBuf};

use crate::hardening::WORKSPACE_MOUNT;

/// Errors finding or preparing a workspace's git layout.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The workspace's `.git` is something kennel cannot protect.
    #[error("{}: {message}", path.display())]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Reading or preparing a path failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One path as the host and the sandbox see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// Host path.
    pub host: PathBuf,
    /// Path inside the sandbox.
    pub container: PathBuf,
}

impl Loc {
    fn child(&self, name: &str) -> Loc {
        Loc {
            host: self.host.join(name),
            container: self.container.join(name),
        }
    }
}

/// What must exist before mounting (a bind mount of a missing source would make the engine
/// create a *directory* there, which breaks git for `config.worktree`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file; created empty when missing (git treats an empty config file like an absent one).
    File,
    /// A directory; created empty when missing (so the sandbox cannot create it, e.g. `hooks/`).
    Dir,
    /// Mounted only when it exists.
    IfExists,
}

/// The git mounts of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitMounts {
    /// The main repository's git directory when it lies outside the workspace (a worktree):
    /// mounted **read-only** at its own path, so git works unchanged inside.
    pub common_dir: Option<Loc>,
    /// Whether the main git directory lies inside the workspace (writable with it).
    pub common_in_workspace: bool,
    /// Mounted read-write on top of a read-only parent: objects/, refs/, logs/ and the
    /// worktree's own admin directory, with what to create first when missing.
    pub rw_overlays: Vec<(Loc, Kind)>,
    /// Mounted read-only over the writable mounts, with what to create first when missing.
    pub read_only: Vec<(Loc, Kind)>,
    /// Paths for `safe.directory` (the workspace and the git directory inside the sandbox), so
    /// a repository owned by another uid of group `dev` is not "dubious".
    pub safe_directories: Vec<String>,
}

/// Container paths the main git directory may not be mounted at.
const RESERVED: [&str; 5] = ["/proc", "/sys", "/dev", "/run/kennel", "/etc"];

fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> GitError + 'a {
    move |source| GitError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn unsupported(path: &Path, message: impl Into<String>) -> GitError {
    GitError::Unsupported {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads `file` (a `.git` file or a `commondir` file) and resolves its path against `host_base`
/// and `container_base` (git resolves relative paths against the file's directory).
fn follow(
    file: &Path,
    prefix: &str,
    host_base: &Path,
    container_base: &Path,
) -> Result<Loc, GitError> {
    let text = std::fs::read_to_string(file).map_err(io("read", file))?;
    let line = text.lines().next().unwrap_or("").trim();
    let target = line.strip_prefix(prefix).map(str::trim).ok_or_else(|| {
        unsupported(
            file,
            format!("expected a line `{prefix}<path>`; kennel does not mount a git directory it cannot find"),
        )
    })?;
    if target.is_empty() {
        return Err(unsupported(file, "names an empty path"));
    }
    let t = Path::new(target);
    Ok(if t.is_absolute() {
        Loc {
            host: lexical(t),
            container: lexical(t),
        }
    } else {
        Loc {
            host: lexical(&host_base.join(t)),
            container: lexical(&container_base.join(t)),
        }
    })
}

/// Finds the git layout of `workspace` (an absolute host path): `None` when it has no `.git`.
/// A `.git` directory is a plain repository; a `.git` file (`gitdir: …`) a linked worktree.
pub fn discover(workspace: &Path) -> Result<Option<GitMounts>, GitError> {
    let ws = Loc {
        host: workspace.to_path_buf(),
        container: PathBuf::from(WORKSPACE_MOUNT),
    };
    let dot_git = ws.child(".git");
    let meta = match std::fs::symlink_metadata(&dot_git.host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("inspect", &dot_git.host)(e)),
    };
    let mut m = GitMounts {
        common_dir: None,
        common_in_workspace: false,
        rw_overlays: Vec::new(),
        read_only: Vec::new(),
        safe_directories: vec![WORKSPACE_MOUNT.to_string()],
    };
    if meta.file_type().is_symlink() {
        return Err(unsupported(
            &dot_git.host,
            "is a symlink; kennel cannot protect a git directory it reaches through a link. Replace it with the directory or a `gitdir:` file",
        ));
    }
    if meta.is_dir() {
        protect_common(&mut m, &dot_git, true);
        refuse_links(&m)?;
        return Ok(Some(m));
    }
    // A linked worktree: `.git` names its admin directory `<common>/worktrees/<name>`, whose
    // `commondir` names the main git directory.
    let admin = follow(&dot_git.host, "gitdir:", &ws.host, &ws.container)?;
    if !admin.host.is_dir() {
        return Err(unsupported(
            &dot_git.host,
            format!(
                "points at {}, which is not a directory (was the main repository moved? `git worktree repair` fixes it)",
                admin.host.display()
            ),
        ));
    }
    let commondir_file = admin.host.join("commondir");
    let common = if commondir_file.is_file() {
        follow(&commondir_file, "", &admin.host, &admin.container)?
    } else {
        admin.clone()
    };
    for loc in [&admin, &common] {
        check_mountable(loc)?;
    }
    let admin_in_common = admin.host.parent() == Some(common.host.join("worktrees").as_path());
    if !common.host.starts_with(&ws.host) {
        if !admin_in_common {
            return Err(unsupported(
                &dot_git.host,
                format!(
                    "points at {}, which is not in {}/worktrees/; kennel supports worktrees made by `git worktree add`",
                    admin.host.display(),
                    common.host.display()
                ),
            ));
        }
        // The usual linked worktree. The main git directory is mounted READ-ONLY at its own
        // path, and writable on top only what git needs to commit, branch and fetch from a
        // worktree: objects/, refs/, logs/ (reftable/ if used) and this worktree's admin
        // directory. So the sandbox can create nothing in the git directory's root (a
        // `commondir` there would redirect host git), nor touch hooks/, config, info/, modules/
        // or other worktrees. What needs the root (packed-refs rewrites, gc) fails inside.
        m.common_dir = Some(common.clone());
        for d in ["objects", "refs", "logs"] {
            m.rw_overlays.push((common.child(d), Kind::Dir));
        }
        m.rw_overlays
            .push((common.child("reftable"), Kind::IfExists));
        m.rw_overlays.push((admin.clone(), Kind::IfExists));
    } else {
        // The main git directory inside the workspace (unusual): writable with the workspace,
        // so protect what git obeys in place, as for a plain repository.
        m.common_in_workspace = true;
        protect_common(&mut m, &common, false);
        if admin_in_common {
            m.read_only.push((common.child("worktrees"), Kind::Dir));
            m.rw_overlays.push((admin.clone(), Kind::IfExists));
        }
    }
    m.read_only.push((admin.child("commondir"), Kind::IfExists));
    m.read_only.push((admin.child("gitdir"), Kind::IfExists));
    m.read_only
        .push((admin.child("config.worktree"), Kind::File));
    m.read_only.push((dot_git, Kind::IfExists));
    let c = common.container.display().to_string();
    m.safe_directories.push(c);
    refuse_links(&m)?;
    Ok(Some(m))
}

/// A bind mount follows a symlink at its source **on the host**. Every path mounted here is one
/// the sandbox could have created in an earlier session (e.g. `.git/modules` as a link to
/// `/root/.ssh`, mounted on the next `kennel up`), so a link is refused, never followed.
fn refuse_links(m: &GitMounts) -> Result<(), GitError> {
    let locs = m
        .read_only
        .iter()
        .chain(&m.rw_overlays)
        .map(|(l, _)| l)
        .chain(m.common_dir.as_ref());
    for l in locs {
        if std::fs::symlink_metadata(&l.host).is_ok_and(|md| md.file_type().is_symlink()) {
            return Err(unsupported(
                &l.host,
                "is a symlink; kennel mounts git paths only as themselves (a link here may have been planted by a sandbox). Inspect it and replace it with the real file or directory",
            ));
        }
    }
    Ok(())
}

/// The files and directories of a git directory that git on the host executes or obeys.
fn protect_common(m: &mut GitMounts, git_dir: &Loc, plain: bool) {
    // The git directory itself, writable as before but bound onto itself: a mount point cannot be
    // renamed or removed (EBUSY). Without it the sandbox could `mv .git elsewhere` — the
    // read-only mounts below move along — and plant a fresh `.git/` with hooks and a config
    // that the person's next host `git` would obey.
    m.rw_overlays.push((git_dir.clone(), Kind::Dir));
    m.read_only.push((git_dir.child("hooks"), Kind::Dir));
    m.read_only.push((git_dir.child("info"), Kind::Dir));
    m.read_only.push((git_dir.child("config"), Kind::File));
    m.read_only
        .push((git_dir.child("config.worktree"), Kind::File));
    // Submodules' git directories have their own hooks and config; host git recurses into them.
    m.read_only.push((git_dir.child("modules"), Kind::IfExists));
    if plain {
        // Its worktrees' admin directories (checkouts elsewhere) are read-only too.
        m.read_only
            .push((git_dir.child("worktrees"), Kind::IfExists));
    }
}

fn check_mountable(loc: &Loc) -> Result<(), GitError> {
    for p in [&loc.host, &loc.container] {
        if p.to_string_lossy().contains([':', ',']) {
            return Err(unsupported(
                p,
                "contains ':' or ','; Docker bind mounts cannot express such a path",
            ));
        }
    }
    let c = &loc.container;
    if c == Path::new("/") || RESERVED.iter().any(|r| c.starts_with(r)) {
        return Err(unsupported(
            &loc.host,
            format!(
                "would have to be mounted at {} inside the sandbox, which is reserved",
                c.display()
            ),
        ));
    }
    Ok(())
}

impl GitMounts {
    /// The `GIT_CONFIG_COUNT` / `GIT_CONFIG_KEY_n` / `GIT_CONFIG_VALUE_n` variables setting
    /// `safe.directory` (command-line scope, which git trusts for it; the user's `.gitconfig`
    /// stays untouched).
    pub fn env(&self) -> Vec<String> {
        let mut env = vec![format!("GIT_CONFIG_COUNT={}", self.safe_directories.len())];
        for (i, d) in self.safe_directories.iter().enumerate() {
            env.push(format!("GIT_CONFIG_KEY_{i}=safe.directory"));
            env.push(format!("GIT_CONFIG_VALUE_{i}={d}"));
        }
        env
    }

    /// Bind mounts, in `src:dst:mode` form. The engine mounts parents before children, so the
    /// read-only ones land on top of the writable ones whatever their order here.
    pub fn binds(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(c) = &self.common_dir {
            out.push(bind(c, "ro"));
        }
        for (l, kind) in &self.rw_overlays {
            if *kind != Kind::IfExists || l.host.exists() {
                out.push(bind(l, "rw"));
            }
        }
        for (l, kind) in &self.read_only {
            if *kind != Kind::IfExists || l.host.exists() {
                out.push(bind(l, "ro"));
            }
        }
        out
    }

    /// Creates the missing files and directories that are mounted read-only (an empty
    /// `config.worktree`, an empty `hooks/` …), owned like their parent, so the sandbox cannot
    /// create them and the engine does not create a directory in a file's place. Call on the
    /// host before creating the sandbox.
    pub fn prepare_host(&self) -> Result<(), GitError> {
        use std::os::unix::fs::MetadataExt;
        for (l, kind) in self.read_only.iter().chain(&self.rw_overlays) {
            if l.host.exists() || *kind == Kind::IfExists {
                continue;
            }
            let parent = l.host.parent().unwrap_or(Path::new("/"));
            let pmeta = std::fs::metadata(parent).map_err(io("inspect", parent))?;
            match kind {
                Kind::File => {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&l.host)
                        .map_err(io("create", &l.host))?;
                }
                Kind::Dir => std::fs::create_dir(&l.host).map_err(io("create", &l.host))?,
                Kind::IfExists => {}
            }
            // Owned like the git directory, so the person's own git keeps working; failing
            // (not root) leaves it owned by the daemon's user, who then owns the parent too.
            let _ = std::os::unix::fs::chown(&l.host, Some(pmeta.uid()), Some(pmeta.gid()));
        }
        Ok(())
    }

    /// The host git directory written to besides the workspace (its objects/, refs/, logs/ are
    /// writable; checked for ownership).
    pub fn rw_host_dir(&self) -> Option<&Path> {
        self.common_dir.as_ref().map(|l| l.host.as_path())
    }
}

/// Files in the workspace's git directories that git on the host would follow but that neither
/// git nor kennel creates in a main repository: a `commondir` there redirects host git to another
/// common directory (with a config of its writer's choosing). The sandbox can create one, because
/// the git directory's root must stay writable; kennel reports it so the person checks before
/// running git on the host. Empty when there is no git directory or nothing unexpected.
pub fn unexpected_redirects(workspace: &Path) -> Vec<PathBuf> {
    let Ok(Some(m)) = discover(workspace) else {
        return Vec::new();
    };
    let main_git_dir = match &m.common_dir {
        Some(c) => c.host.clone(),
        None => workspace.join(".git"),
    };
    let candidate = main_git_dir.join("commondir");
    if candidate.exists() {
        vec![candidate]
    } else {
        Vec::new()
    }
}

fn bind(l: &Loc, mode: &str) -> String {
    format!("{}:{}:{mode}", l.host.display(), l.container.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let st = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@kennel.invalid"])
            .args(args)
            .output()
            .expect("host git");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }

    #[test]
    fn no_git_no_mounts_and_a_symlinked_git_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(discover(d.path()).expect("discover"), None);
        std::os::unix::fs::symlink("/etc", d.path().join(".git")).expect("symlink");
        let e = discover(d.path()).expect_err("symlink");
        assert!(e.to_string().contains("is a symlink"), "{e}");
    }

    #[test]
    fn worktree_mounts_main_git_dir_rw_and_what_git_obeys_ro() {
        let root = tempfile::tempdir().expect("tmp");
        let main = root.path().join("main");
        std::fs::create_dir(&main).expect("mkdir");
        git(&main, &["init", "-q", "-b", "main"]);
        git(&main, &["commit", "-q", "--allow-empty", "-m", "x"]);
        git(&main, &["worktree", "add", "-q", "../task", "-b", "t"]);
        let task = root.path().join("task");
        let m = discover(&task).expect("discover").expect("a repo");
        let common = main.join(".git");
        let c = common.display().to_string();
        assert_eq!(m.rw_host_dir(), Some(common.as_path()));
        assert_eq!(
            m.safe_directories,
            vec!["/workspace".to_string(), c.clone()]
        );
        assert_eq!(
            m.env(),
            vec![
                "GIT_CONFIG_COUNT=2".to_string(),
                "GIT_CONFIG_KEY_0=safe.directory".into(),
                "GIT_CONFIG_VALUE_0=/workspace".into(),
                "GIT_CONFIG_KEY_1=safe.directory".into(),
                format!("GIT_CONFIG_VALUE_1={c}"),
            ]
        );
        m.prepare_host().expect("prepare");
        // Under the read-only main git directory nothing needs creating but the admin dir's
        // config.worktree (the admin dir is writable).
        assert!(!common.join("config.worktree").exists());
        assert!(common.join("worktrees/task/config.worktree").is_file());
        let binds = m.binds();
        for want in [
            format!("{c}:{c}:ro"),
            format!("{c}/objects:{c}/objects:rw"),
            format!("{c}/refs:{c}/refs:rw"),
            format!("{c}/logs:{c}/logs:rw"),
            format!("{c}/worktrees/task:{c}/worktrees/task:rw"),
            format!("{c}/worktrees/task/commondir:{c}/worktrees/task/commondir:ro"),
            format!("{c}/worktrees/task/gitdir:{c}/worktrees/task/gitdir:ro"),
            format!("{c}/worktrees/task/config.worktree:{c}/worktrees/task/config.worktree:ro"),
            format!("{}/.git:/workspace/.git:ro", task.display()),
        ] {
            assert!(binds.contains(&want), "missing {want} in {binds:#?}");
        }
    }

    #[test]
    fn plain_repo_protects_its_git_dir_in_place_and_relative_gitdir_resolves_in_the_sandbox() {
        let d = tempfile::tempdir().expect("tmp");
        git(d.path(), &["init", "-q"]);
        std::fs::remove_dir_all(d.path().join(".git/hooks")).expect("rm hooks");
        let m = discover(d.path()).expect("discover").expect("repo");
        assert_eq!(m.rw_host_dir(), None);
        assert_eq!(m.safe_directories, vec!["/workspace".to_string()]);
        m.prepare_host().expect("prepare");
        assert!(d.path().join(".git/hooks").is_dir());
        let h = d.path().display().to_string();
        let binds = m.binds();
        for want in [
            format!("{h}/.git/hooks:/workspace/.git/hooks:ro"),
            format!("{h}/.git/config:/workspace/.git/config:ro"),
            format!("{h}/.git/config.worktree:/workspace/.git/config.worktree:ro"),
        ] {
            assert!(binds.contains(&want), "missing {want} in {binds:#?}");
        }

        // A relative `gitdir:` is resolved against /workspace inside, as git will.
        let root = tempfile::tempdir().expect("tmp");
        let admin = root.path().join("repo/.git/worktrees/w");
        std::fs::create_dir_all(&admin).expect("mkdir");
        std::fs::write(admin.join("commondir"), "../..\n").expect("w");
        let w = root.path().join("w");
        std::fs::create_dir(&w).expect("mkdir");
        std::fs::write(w.join(".git"), "gitdir: ../repo/.git/worktrees/w\n").expect("w");
        let m = discover(&w).expect("discover").expect("repo");
        let common = m.common_dir.expect("outside the workspace");
        assert_eq!(common.host, root.path().join("repo/.git"));
        assert_eq!(common.container, Path::new("/repo/.git"));

        // A `commondir` the sandbox could have written into the main git directory is reported.
        assert!(unexpected_redirects(&w).is_empty());
        std::fs::write(root.path().join("repo/.git/commondir"), "/elsewhere\n").expect("w");
        assert_eq!(
            unexpected_redirects(&w),
            vec![root.path().join("repo/.git/commondir")]
        );

        // A link where a protected path would be (planted in an earlier session) is refused.
        std::os::unix::fs::symlink("/etc", root.path().join("repo/.git/logs")).expect("ln");
        let e = discover(&w).expect_err("planted link");
        assert!(e.to_string().contains("is a symlink"), "{e}");
        std::fs::remove_file(root.path().join("repo/.git/logs")).expect("rm");
        // In a plain repository, where .git/ is writable, a planted `modules` link is refused too.
        let p = tempfile::tempdir().expect("tmp");
        git(p.path(), &["init", "-q"]);
        std::os::unix::fs::symlink("/etc", p.path().join(".git/modules")).expect("ln");
        let e = discover(p.path()).expect_err("planted link");
        assert!(e.to_string().contains("modules"), "{e}");

        // A `.git` file that is not a gitdir line is refused, not guessed at.
        std::fs::write(w.join(".git"), "nonsense\n").expect("w");
        let e = discover(&w).expect_err("bad .git");
        assert!(e.to_string().contains("gitdir:"), "{e}");
    }
}
