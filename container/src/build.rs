//! Builds the workspace's own image (devcontainer.json `build` or kennel.toml `[build]`) through
//! the engine's build API, **on the environment's internal network with its proxy**, so a `RUN`
//! step reaches exactly what the environment's policy allows — a Dockerfile the agent edited
//! cannot fetch from a denied origin at rebuild time.
//!
//! - The context is packed into a tar here (honouring `.dockerignore`, symlinks stored as links
//!   and never followed, every timestamp 0) and hashed; the image is tagged
//!   `kennel-build-<env>:<16 hex of the hash>` and not rebuilt while that tag exists.
//! - The classic builder is used: BuildKit only accepts `default`/`host`/`none` as network mode,
//!   the classic builder runs each `RUN` container on the named (internal) network.
//! - `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` (both spellings) are passed as build arguments; Docker
//!   predefines them, so a Dockerfile needs no `ARG`, and they are not kept in the image history.
//! - Pulling `FROM` images is the engine's business (its own network and credentials).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::backend::{LABEL_ENV, LABEL_MANAGED, LABEL_ROLE, names};
use crate::devcontainer::BuildSpec;

/// At most this many entries are packed from a build context.
pub const MAX_CONTEXT_ENTRIES: usize = 200_000;
/// At most this many bytes of file content are packed (the tar is held in memory).
pub const MAX_CONTEXT_BYTES: u64 = 1 << 30;
/// A build taking longer than this is stopped.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Role label of images kennel built.
pub const ROLE_IMAGE: &str = "image";
/// Name under which a Dockerfile that lies outside the context is added to the tar.
const OUTSIDE_DOCKERFILE: &str = ".kennel-Dockerfile";

/// Errors packing a build context or building the image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file of the context could not be read.
    #[error("cannot read {} for the build context: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The context is larger than the limits.
    #[error(
        "build context {} is too large ({what}); exclude what the image does not need in its .dockerignore",
        context.display()
    )]
    TooLarge {
        /// The context directory.
        context: PathBuf,
        /// Which limit.
        what: String,
    },
    /// `.dockerignore` has a pattern the matcher does not accept.
    #[error("{}: {message}", path.display())]
    Ignore {
        /// The `.dockerignore` file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The engine failed the build (a `RUN` step failed, the Dockerfile is invalid …). `log`
    /// holds the last lines of the build output.
    #[error("building image {tag} from {} failed: {message}\nlast lines of the build output:\n{log}", dockerfile.display())]
    Failed {
        /// The tag being built.
        tag: String,
        /// The Dockerfile.
        dockerfile: PathBuf,
        /// The engine's error.
        message: String,
        /// The last lines of output.
        log: String,
    },
    /// The build did not finish in [`BUILD_TIMEOUT`].
    #[error("building image {tag} did not finish within {} s", BUILD_TIMEOUT.as_secs())]
    Timeout {
        /// The tag being built.
        tag: String,
    },
}

/// A packed build context.
#[derive(Debug)]
pub struct Context {
    /// The tar (uncompressed).
    pub tar: Vec<u8>,
    /// The Dockerfile's path inside the tar.
    pub dockerfile: String,
    /// Hex SHA-256 over the tar, the Dockerfile path, the arguments and the target.
    pub hash: String,
    /// Entries left out because they are neither file, directory nor symlink (sockets, fifos).
    pub skipped: Vec<PathBuf>,
}

impl Context {
    /// The image tag for environment `env`: `kennel-build-<env>:<16 hex>`.
    pub fn tag(&self, env: &str) -> String {
        format!("kennel-build-{env}:{}", &self.hash[..16])
    }
}

/// Reads `.dockerignore` of `context` into a matcher. Docker's patterns are relative to the
/// context root, so each is anchored with a leading `/` for the gitignore matcher. Difference
/// from Docker: a file below an excluded directory cannot be re-included with `!` (gitignore
/// rules); exclude the directory's contents (`dir/*`) instead.
fn ignore_matcher(context: &Path) -> Result<ignore::gitignore::Gitignore, BuildError> {
    let path = context.join(".dockerignore");
    let mut b = ignore::gitignore::GitignoreBuilder::new(context);
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|source| BuildError::Read {
            path: path.clone(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (neg, pat) = match line.strip_prefix('!') {
                Some(p) => ("!", p.trim()),
                None => ("", line),
            };
            let pat = pat.trim_start_matches("./").trim_start_matches('/');
            b.add_line(None, &format!("{neg}/{pat}"))
                .map_err(|e| BuildError::Ignore {
                    path: path.clone(),
                    message: format!("line {}: {e}", n + 1),
                })?;
        }
    }
    b.build().map_err(|e| BuildError::Ignore {
        path,
        message: e.to_string(),
    })
}

/// What goes into the context: entries (sorted by path) and what was left out.
type Entries = (Vec<(PathBuf, std::fs::Metadata)>, Vec<PathBuf>);

/// Walks the context of `b`: `.dockerignore` honoured (the Dockerfile always kept), symlinks not
/// followed, bounded by [`MAX_CONTEXT_ENTRIES`] and [`MAX_CONTEXT_BYTES`].
fn walk(b: &BuildSpec) -> Result<Entries, BuildError> {
    let root = &b.context;
    let ignore = ignore_matcher(root)?;
    let read = |path: &Path, source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Collect first (bounded), then sort, so the tar — and its hash — do not depend on the
    // order the file system lists entries in.
    let mut entries: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
    let mut stack = vec![root.clone()];
    let mut bytes = 0u64;
    let mut skipped = Vec::new();
    while let Some(dir) = stack.pop() {
        let list = std::fs::read_dir(&dir).map_err(|e| read(&dir, e))?;
        for item in list {
            let item = item.map_err(|e| read(&dir, e))?;
            let path = item.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| read(&path, e))?;
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let forced = path == b.dockerfile;
            if !forced
                && ignore
                    .matched_path_or_any_parents(rel, meta.is_dir())
                    .is_ignore()
            {
                continue;
            }
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(path.clone());
            } else if ft.is_file() {
                bytes += meta.len();
            } else if !ft.is_symlink() {
                skipped.push(path);
                continue;
            }
            entries.push((path, meta));
            if entries.len() > MAX_CONTEXT_ENTRIES {
                return Err(BuildError::TooLarge {
                    context: root.clone(),
                    what: format!("more than {MAX_CONTEXT_ENTRIES} entries"),
                });
            }
            if bytes > MAX_CONTEXT_BYTES {
                return Err(BuildError::TooLarge {
                    context: root.clone(),
                    what: format!("more than {MAX_CONTEXT_BYTES} bytes"),
                });
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((entries, skipped))
}

/// The first entry of the context that a caller with `uid` and groups `gids` could not read
/// itself (a file without read permission for it, a directory without read and search), if
/// any. The daemon packs the context with its own rights; without this check a caller could
/// have the daemon copy another user's private file into an image it then reads.
pub fn unreadable_for(
    b: &BuildSpec,
    uid: u32,
    gids: &[u32],
) -> Result<Option<PathBuf>, BuildError> {
    use std::os::unix::fs::MetadataExt;
    let (entries, _) = walk(b)?;
    let can = |meta: &std::fs::Metadata, need: u32| {
        let mode = meta.mode();
        let bits = if meta.uid() == uid {
            mode >> 6
        } else if gids.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & need == need
    };
    let root = std::fs::metadata(&b.context).map_err(|source| BuildError::Read {
        path: b.context.clone(),
        source,
    })?;
    if !can(&root, 0o5) {
        return Ok(Some(b.context.clone()));
    }
    Ok(entries.into_iter().find_map(|(path, meta)| {
        let ft = meta.file_type();
        let ok = if ft.is_dir() {
            can(&meta, 0o5)
        } else if ft.is_file() {
            can(&meta, 0o4)
        } else {
            // Symlinks are stored as links; their targets are never read.
            true
        };
        (!ok).then_some(path)
    }))
}

/// Packs the build context of `b` (see the module docs). Runs blocking file I/O.
pub fn pack_context(b: &BuildSpec) -> Result<Context, BuildError> {
    let root = &b.context;
    let read = |path: &Path, source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    };
    let (entries, skipped) = walk(b)?;

    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let header = |meta: &std::fs::Metadata, kind: tar::EntryType, size: u64| {
        use std::os::unix::fs::PermissionsExt;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(meta.permissions().mode() & 0o7777);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    let assemble = |e: std::io::Error| read(root, e);
    for (path, meta) in &entries {
        let rel = path.strip_prefix(root).unwrap_or(path);
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = header(meta, tar::EntryType::Directory, 0);
            tar.append_data(&mut h, rel, std::io::empty())
                .map_err(assemble)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| read(path, e))?;
            let mut h = header(meta, tar::EntryType::Symlink, 0);
            tar.append_link(&mut h, rel, &target).map_err(assemble)?;
        } else {
            let file = std::fs::File::open(path).map_err(|e| read(path, e))?;
            let mut h = header(meta, tar::EntryType::Regular, meta.len());
            tar.append_data(&mut h, rel, file).map_err(assemble)?;
        }
    }
    let dockerfile = match b.dockerfile.strip_prefix(root) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => {
            let content = std::fs::read(&b.dockerfile).map_err(|e| read(&b.dockerfile, e))?;
            let meta = std::fs::metadata(&b.dockerfile).map_err(|e| read(&b.dockerfile, e))?;
            let mut h = header(&meta, tar::EntryType::Regular, content.len() as u64);
            tar.append_data(&mut h, OUTSIDE_DOCKERFILE, content.as_slice())
                .map_err(assemble)?;
            OUTSIDE_DOCKERFILE.to_string()
        }
    };
    let tar = tar.into_inner().map_err(assemble)?;

    let mut h = Sha256::new();
    h.update(&tar);
    h.update(b"\0dockerfile\0");
    h.update(dockerfile.as_bytes());
    for (k, v) in &b.args {
        h.update(b"\0arg\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    if let Some(t) = &b.target {
        h.update(b"\0target\0");
        h.update(t.as_bytes());
    }
    Ok(Context {
        tar,
        dockerfile,
        hash: format!("{:x}", h.finalize()),
        skipped,
    })
}

/// The build arguments kennel adds: the proxy variables in both spellings, pointing at the
/// environment's proxy.
pub fn proxy_build_args() -> Vec<(String, String)> {
    let url = crate::hardening::proxy_url();
    let no_proxy = "localhost,127.0.0.1,::1".to_string();
    vec![
        ("HTTP_PROXY".into(), url.clone()),
        ("HTTPS_PROXY".into(), url.clone()),
        ("http_proxy".into(), url.clone()),
        ("https_proxy".into(), url),
        ("NO_PROXY".into(), no_proxy.clone()),
        ("no_proxy".into(), no_proxy),
    ]
}

/// One image build that actually ran (not a reuse of an existing content tag), as reported to
/// [`collecting_builds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The image's content tag.
    pub tag: String,
    /// The Dockerfile it was built from.
    pub dockerfile: PathBuf,
    /// How long the build took, in milliseconds.
    pub ms: u64,
}

tokio::task_local! {
    // The builds run inside a `collecting_builds` scope. A task-local rather than a new field of
    // the widely built `EnvPlan` or of the progress channel: progress lines carry the build's
    // own output, which the workspace's Dockerfile controls and could imitate.
    static BUILDS: std::cell::RefCell<Vec<BuiltImage>>;
}

/// Runs `fut` (e.g. a backend's `create_env`) and returns its output with the image builds
/// [`build_image`] actually ran inside it, in order; reused content tags are not listed.
pub async fn collecting_builds<F: std::future::Future>(fut: F) -> (F::Output, Vec<BuiltImage>) {
    BUILDS
        .scope(std::cell::RefCell::new(Vec::new()), async move {
            let out = fut.await;
            let builds = BUILDS.with(|b| b.take());
            (out, builds)
        })
        .await
}

/// Builds `b` for environment `env` on its internal network (which, with its proxy, must
/// exist), or reuses the image when its content tag exists. Each output line goes to
/// `progress`. Returns the tag.
pub async fn build_image(
    docker: &Docker,
    env: &str,
    b: &BuildSpec,
    extra_labels: &[(String, String)],
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<String, crate::error::BackendError> {
    let spec = b.clone();
    let ctx = tokio::task::spawn_blocking(move || pack_context(&spec))
        .await
        .map_err(|e| crate::error::BackendError::engine("pack build context", env, e))??;
    let tag = ctx.tag(env);
    for s in &ctx.skipped {
        progress(format!(
            "build context: {} is not a file, directory or symlink; not sent",
            s.display()
        ));
    }
    if docker.inspect_image(&tag).await.is_ok() {
        progress(format!(
            "image {tag} is up to date (build context unchanged); not rebuilding"
        ));
        return Ok(tag);
    }
    let started = std::time::Instant::now();
    progress(format!(
        "building {} (context {}, {} KiB) as {tag}, RUN steps on network {} through the proxy",
        b.dockerfile.display(),
        b.context.display(),
        ctx.tar.len() / 1024,
        names::network(env)
    ));
    let mut buildargs: HashMap<String, String> = b.args.iter().cloned().collect();
    buildargs.extend(proxy_build_args());
    let mut labels: HashMap<String, String> = extra_labels.iter().cloned().collect();
    labels.insert(LABEL_ENV.into(), env.into());
    labels.insert(LABEL_ROLE.into(), ROLE_IMAGE.into());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    let options = BuildImageOptions {
        dockerfile: ctx.dockerfile.clone(),
        t: Some(tag.clone()),
        rm: true,
        forcerm: true,
        buildargs: Some(buildargs),
        labels: Some(labels),
        networkmode: Some(names::network(env)),
        target: b.target.clone().unwrap_or_default(),
        version: BuilderVersion::BuilderV1,
        ..Default::default()
    };
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(ctx.tar.into())));
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let remember = |line: String, tail: &mut std::collections::VecDeque<String>| {
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        progress(line);
    };
    let failed = |message: String, tail: &std::collections::VecDeque<String>| BuildError::Failed {
        tag: tag.clone(),
        dockerfile: b.dockerfile.clone(),
        message,
        log: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
    };
    // The engine sends output in chunks that need not end at a line (a RUN step's output can
    // arrive byte by byte): whole lines are reported, the rest waits for its newline.
    let mut pending = String::new();
    let mut lines_of = |text: &str, tail: &mut std::collections::VecDeque<String>| {
        pending.push_str(text);
        while let Some(nl) = pending.find('\n') {
            let line: String = pending.drain(..=nl).collect();
            let line = line.trim_end();
            if !line.trim().is_empty() {
                remember(line.to_string(), tail);
            }
        }
    };
    let run = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream {
                        lines_of(&text, &mut tail);
                    }
                    // Status messages (pulls) are whole lines of their own.
                    if let Some(status) = info.status {
                        lines_of(&format!("{status}\n"), &mut tail);
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    lines_of("\n", &mut tail);
                    return Err(failed(error, &tail));
                }
                Err(e) => {
                    lines_of("\n", &mut tail);
                    return Err(failed(e.to_string(), &tail));
                }
            }
        }
        lines_of("\n", &mut tail);
        Ok(())
    };
    match tokio::time::timeout(BUILD_TIMEOUT, run).await {
        Ok(r) => r?,
        Err(_) => return Err(BuildError::Timeout { tag }.into()),
    }
    // The stream can end without an error but without an image (engine quirks): check.
    docker
        .inspect_image(&tag)
        .await
        .map_err(|e| crate::error::BackendError::engine("inspect built image", &tag, e))?;
    let built = BuiltImage {
        tag: tag.clone(),
        dockerfile: b.dockerfile.clone(),
        ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    // Outside a `collecting_builds` scope nobody asked: nothing to tell.
    let _ = BUILDS.try_with(|list| list.borrow_mut().push(built));
    Ok(tag)
}

/// The uid of user `name` in `image`, read from its `/etc/passwd` through a container that is
/// created but never started (labelled for `env`, removed again). Refuses uid 0.
pub async fn image_uid(
    docker: &Docker,
    env: &str,
    image: &str,
    name: &str,
    extra_labels: &[(String, String)],
) -> Result<u32, crate::error::BackendError> {
    use crate::error::BackendError;
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{
        CreateContainerOptions, DownloadFromContainerOptions, RemoveContainerOptions,
    };
    let probe = format!("kennel-{env}-userprobe");
    let mut labels: HashMap<String, String> = extra_labels.iter().cloned().collect();
    labels.insert(LABEL_ENV.into(), env.into());
    labels.insert(LABEL_ROLE.into(), "user-probe".into());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(probe.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(image.to_string()),
                // Never started; a command is required only by images without one.
                cmd: Some(vec!["/nonexistent".into()]),
                network_disabled: Some(true),
                labels: Some(labels),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| BackendError::engine("create container", &probe, e))?;
    let mut tar = Vec::new();
    let mut stream = docker.download_from_container(
        &probe,
        Some(DownloadFromContainerOptions {
            path: "/etc/passwd".into(),
        }),
    );
    let mut read = Ok(());
    while let Some(chunk) = stream.next().await {
        match chunk {
            // /etc/passwd is small; a huge answer is not one.
            Ok(b) if tar.len() + b.len() <= 16 << 20 => tar.extend_from_slice(&b),
            Ok(_) => {
                read = Err("/etc/passwd is larger than 16 MiB".to_string());
                break;
            }
            Err(e) => {
                read = Err(format!("cannot read /etc/passwd: {e}"));
                break;
            }
        }
    }
    drop(stream);
    let _ = docker
        .remove_container(
            &probe,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    let invalid = |message: String| BackendError::InvalidPlan {
        env: env.to_string(),
        message: format!("remoteUser/containerUser {name:?} in image {image}: {message}"),
    };
    read.map_err(invalid)?;
    let mut passwd = String::new();
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entries = archive
        .entries()
        .map_err(|e| invalid(format!("unreadable archive of /etc/passwd: {e}")))?;
    if let Some(Ok(mut entry)) = entries.next() {
        use std::io::Read;
        entry
            .by_ref()
            .take(16 << 20)
            .read_to_string(&mut passwd)
            .map_err(|e| invalid(format!("/etc/passwd is not text: {e}")))?;
    }
    crate::devcontainer::uid_from_passwd(&passwd, name).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> BuildSpec {
        BuildSpec {
            context: dir.to_path_buf(),
            dockerfile: dir.join("Dockerfile"),
            args: vec![],
            target: None,
        }
    }

    fn names_in(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        let mut out: Vec<String> = a
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn dockerignore_is_honoured_and_the_hash_follows_content_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path();
        std::fs::write(p.join("Dockerfile"), "FROM x\n").expect("w");
        std::fs::write(
            p.join(".dockerignore"),
            "# comment\nnode_modules\n*.log\n!keep.log\nDockerfile\nsub/secret\n",
        )
        .expect("w");
        std::fs::create_dir_all(p.join("node_modules/x")).expect("mkdir");
        std::fs::write(p.join("node_modules/x/a.js"), "x").expect("w");
        std::fs::write(p.join("a.log"), "x").expect("w");
        std::fs::write(p.join("keep.log"), "x").expect("w");
        std::fs::create_dir(p.join("sub")).expect("mkdir");
        std::fs::write(p.join("sub/secret"), "x").expect("w");
        std::fs::write(p.join("sub/a.log"), "x").expect("w");
        std::os::unix::fs::symlink("/etc/shadow", p.join("link")).expect("symlink");
        let ctx = pack_context(&spec(p)).expect("pack");
        assert_eq!(
            names_in(&ctx.tar),
            [
                ".dockerignore",
                "Dockerfile",
                "keep.log",
                "link",
                "sub",
                "sub/a.log"
            ]
        );
        assert_eq!(ctx.dockerfile, "Dockerfile");
        // The symlink is stored as a link, never followed.
        let mut a = tar::Archive::new(ctx.tar.as_slice());
        let link = a
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry"))
            .find(|e| e.path().expect("p").to_string_lossy() == "link")
            .expect("link entry");
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);

        let again = pack_context(&spec(p)).expect("pack");
        assert_eq!(ctx.hash, again.hash, "same content, same hash");
        std::fs::write(p.join("node_modules/x/a.js"), "changed").expect("w");
        assert_eq!(
            ctx.hash,
            pack_context(&spec(p)).expect("pack").hash,
            "ignored file"
        );
        std::fs::write(p.join("keep.log"), "changed").expect("w");
        let changed = pack_context(&spec(p)).expect("pack");
        assert_ne!(ctx.hash, changed.hash, "content change");
        let mut with_arg = spec(p);
        with_arg.args = vec![("A".into(), "1".into())];
        assert_ne!(changed.hash, pack_context(&with_arg).expect("pack").hash);
        assert!(ctx.tag("env").starts_with("kennel-build-env:"));
    }

    #[test]
    fn files_the_caller_cannot_read_are_found() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(p.join("Dockerfile"), "FROM x\n").expect("w");
        std::fs::set_permissions(p.join("Dockerfile"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let owner = std::fs::metadata(p).expect("meta").uid();
        let other = owner.wrapping_add(4242);
        assert_eq!(unreadable_for(&spec(p), other, &[]).expect("walk"), None);
        std::fs::write(p.join("private"), "secret").expect("w");
        std::fs::set_permissions(p.join("private"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        assert_eq!(
            unreadable_for(&spec(p), other, &[]).expect("walk"),
            Some(p.join("private"))
        );
        // Its owner may; so may anyone once it is excluded.
        assert_eq!(unreadable_for(&spec(p), owner, &[]).expect("walk"), None);
        std::fs::write(p.join(".dockerignore"), "private\n").expect("w");
        std::fs::set_permissions(
            p.join(".dockerignore"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        assert_eq!(unreadable_for(&spec(p), other, &[]).expect("walk"), None);
    }
}
