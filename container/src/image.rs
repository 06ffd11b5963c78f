//! Images without a registry: a root filesystem assembled from host files is packed as a
//! `docker save`-format archive (manifest + config + one layer) and loaded through the engine's
//! `/images/load`. The tag carries the content hash, so an unchanged image is not loaded again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::ImportImageOptions;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::docker::DockerBackend;
use crate::error::{BackendError, ImageError};

/// Repository name of the proxy image.
pub const PROXY_REPO: &str = "kennel-proxy";
/// Path of the proxy binary inside its image.
pub const PROXY_BIN_IN_IMAGE: &str = "/kennel-proxy";
/// Where the static proxy build lands (relative to the workspace root), see
/// `scripts/build-proxy-static`.
pub const STATIC_PROXY_REL: &str = "target/static/x86_64-unknown-linux-gnu/release/kennel-proxy";

#[derive(Clone)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// A root filesystem plus image config, packed deterministically.
#[derive(Clone, Default)]
pub struct RootfsImage {
    entries: BTreeMap<String, Entry>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    user: Option<String>,
    env: Vec<String>,
    workdir: Option<String>,
    labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for RootfsImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootfsImage")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl RootfsImage {
    /// An empty (FROM scratch) image.
    pub fn new() -> Self {
        Self::default()
    }

    fn add_parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.entries.entry(acc.clone()).or_insert(Entry::Dir);
        }
    }

    /// Adds a directory (mode 0755; `/tmp` gets 1777 automatically).
    pub fn dir(mut self, path: &str) -> Self {
        let p = clean(path);
        self.add_parents(&p);
        self.entries.insert(p, Entry::Dir);
        self
    }

    /// Adds a file with the given content and mode.
    pub fn file(mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        let p = clean(path);
        self.add_parents(&p);
        self.entries.insert(
            p,
            Entry::File {
                data: data.into(),
                mode,
            },
        );
        self
    }

    /// Copies a host file (following symlinks) into the image with the given mode.
    pub fn host_file(self, path: &str, host: &Path, mode: u32) -> Result<Self, ImageError> {
        let data = std::fs::read(host).map_err(|source| ImageError::ReadFile {
            image: path.to_string(),
            path: host.to_path_buf(),
            source,
        })?;
        Ok(self.file(path, data, mode))
    }

    /// Adds a symlink `path -> target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let p = clean(path);
        self.add_parents(&p);
        self.entries.insert(p, Entry::Symlink(target.to_string()));
        self
    }

    /// Sets the entrypoint.
    pub fn entrypoint(mut self, argv: &[&str]) -> Self {
        self.entrypoint = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Sets the default command.
    pub fn cmd(mut self, argv: &[&str]) -> Self {
        self.cmd = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Sets the default user (`uid:gid`).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    /// Adds an environment variable `KEY=VALUE`.
    pub fn env(mut self, kv: &str) -> Self {
        self.env.push(kv.to_string());
        self
    }

    /// Sets the working directory.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = Some(dir.to_string());
        self
    }

    /// Adds an image label.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }

    fn layer_tar(&self) -> std::io::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match entry {
                Entry::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(if path == "tmp" { 0o1777 } else { 0o755 });
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { data, mode } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_slice())?;
                }
                Entry::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
            }
        }
        b.into_inner()
    }

    /// Packs the image as a `docker save` archive tagged `<repo>:<hash>` and returns
    /// `(tag, archive)`. The hash is the first 16 hex digits of the image config's digest (which
    /// covers the layer's digest), so identical content gives an identical tag.
    pub fn pack(&self, repo: &str) -> std::io::Result<(String, Vec<u8>)> {
        let layer = self.layer_tar()?;
        let diff_id = format!("{:x}", Sha256::digest(&layer));
        let mut config = serde_json::Map::new();
        if let Some(e) = &self.entrypoint {
            config.insert("Entrypoint".into(), serde_json::json!(e));
        }
        if let Some(c) = &self.cmd {
            config.insert("Cmd".into(), serde_json::json!(c));
        }
        if let Some(u) = &self.user {
            config.insert("User".into(), serde_json::json!(u));
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), serde_json::json!(self.env));
        }
        if let Some(w) = &self.workdir {
            config.insert("WorkingDir".into(), serde_json::json!(w));
        }
        if !self.labels.is_empty() {
            config.insert("Labels".into(), serde_json::json!(self.labels));
        }
        let image_config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
            "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "kennel image import" }],
        });
        let config_bytes = serde_json::to_vec(&image_config).map_err(std::io::Error::other)?;
        let config_id = format!("{:x}", Sha256::digest(&config_bytes));
        let tag = format!("{repo}:{}", &config_id[..16]);
        let manifest = serde_json::json!([{
            "Config": format!("{config_id}.json"),
            "RepoTags": [tag],
            "Layers": [format!("{diff_id}/layer.tar")],
        }]);
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;

        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8], dir: bool| -> std::io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            if dir {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
            } else {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
            }
            b.append_data(&mut h, name, data)
        };
        add(&format!("{diff_id}/"), &[], true)?;
        add(&format!("{diff_id}/VERSION"), b"1.0", false)?;
        add(&format!("{diff_id}/layer.tar"), &layer, false)?;
        add(&format!("{config_id}.json"), &config_bytes, false)?;
        add("manifest.json", &manifest_bytes, false)?;
        Ok((tag, b.into_inner()?))
    }
}

/// Whether the engine has an image with this reference.
pub async fn image_exists(docker: &DockerBackend, reference: &str) -> Result<bool, BackendError> {
    match docker.docker().inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(BackendError::engine("inspect image", reference, e)),
    }
}

/// Packs `image` as `<repo>:<hash>` and loads it unless the engine already has that tag.
/// Returns the tag.
pub async fn ensure_image(
    docker: &DockerBackend,
    repo: &str,
    image: &RootfsImage,
) -> Result<String, ImageError> {
    let (tag, archive) = image.pack(repo).map_err(|source| ImageError::Assemble {
        image: repo.to_string(),
        source,
    })?;
    if image_exists(docker, &tag).await? {
        return Ok(tag);
    }
    let mut stream = docker.docker().import_image(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        bollard::body_full(archive.into()),
        None,
    );
    while let Some(item) = stream.next().await {
        item.map_err(|e| BackendError::engine("load image", &tag, e))?;
    }
    if !image_exists(docker, &tag).await? {
        return Err(ImageError::Engine(BackendError::InvalidPlan {
            env: String::new(),
            message: format!("image {tag} is missing after loading it"),
        }));
    }
    Ok(tag)
}

/// The ELF interpreter of a binary (`None` for a static binary).
pub fn elf_interpreter(path: &Path) -> std::io::Result<Option<String>> {
    let data = std::fs::read(path)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 64-bit ELF file");
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(bad)?).map_err(|_| bad())?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or_else(bad)? == 3 {
            let off = usize::try_from(u64_at(ph + 8).ok_or_else(bad)?).map_err(|_| bad())?;
            let size = usize::try_from(u64_at(ph + 32).ok_or_else(bad)?).map_err(|_| bad())?;
            let raw = data.get(off..off + size).ok_or_else(bad)?;
            let s = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string();
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Host libraries a dynamically linked binary needs, as `ldd` lists them (the loader included).
pub fn host_libraries(image: &str, bin: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|source| ImageError::ReadFile {
            image: image.to_string(),
            path: bin.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        })
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// A sandbox-style root file system from host files, the base of the demo sandbox image and of
/// the test images: Debian's busybox-static at `/bin/busybox` with `applets` linked to it, each
/// host binary of `tools` at `/usr/bin/<file name>` with the libraries `ldd` lists, the host's
/// CA bundle, the seeds' users root and claude (1001) in group dev (2000), and `/tmp`, `/root`,
/// `/home`, `/workspace`, `/run`. `image` names the image in errors.
pub fn busybox_rootfs(
    image: &str,
    applets: &[&str],
    tools: &[&Path],
) -> Result<RootfsImage, ImageError> {
    let busybox = Path::new("/bin/busybox");
    let mut img = RootfsImage::new().host_file("/bin/busybox", busybox, 0o755)?;
    for applet in applets {
        img = img.symlink(&format!("/bin/{applet}"), "/bin/busybox");
    }
    let mut libs = std::collections::BTreeSet::new();
    for tool in tools {
        let name = tool
            .file_name()
            .map_or_else(|| "tool".into(), |n| n.to_string_lossy());
        img = img.host_file(&format!("/usr/bin/{name}"), tool, 0o755)?;
        libs.extend(host_libraries(image, tool)?);
    }
    for lib in libs {
        img = img.host_file(&lib.display().to_string(), &lib, 0o755)?;
    }
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.is_file() {
        img = img.host_file("/etc/ssl/certs/ca-certificates.crt", ca, 0o644)?;
    }
    Ok(img
        .file(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nclaude:x:1001:2000:claude:/home/claude:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n",
            0o644,
        )
        .file("/etc/group", "root:x:0:\ndev:x:2000:claude\nnogroup:x:65534:\n", 0o644)
        .file("/etc/nsswitch.conf", "hosts: files dns\n", 0o644)
        .dir("/tmp")
        .dir("/root")
        .dir("/home")
        .dir("/workspace")
        .dir("/run")
        .env("PATH=/usr/local/bin:/usr/bin:/bin"))
}

/// The proxy image's content: the static binary at `/kennel-proxy`, the host's CA bundle (for
/// `https://` upstreams), `/tmp`, run as 65532:65532.
pub fn proxy_rootfs(proxy_binary: &Path) -> Result<RootfsImage, ImageError> {
    match elf_interpreter(proxy_binary) {
        Ok(None) => {}
        Ok(Some(interp)) => {
            return Err(ImageError::NotStatic {
                path: proxy_binary.to_path_buf(),
                interp,
            });
        }
        Err(source) => {
            return Err(ImageError::ReadFile {
                image: PROXY_REPO.into(),
                path: proxy_binary.to_path_buf(),
                source,
            });
        }
    }
    let mut img = RootfsImage::new()
        .host_file(PROXY_BIN_IN_IMAGE, proxy_binary, 0o755)?
        .dir("/tmp")
        .dir("/etc/kennel")
        .file(
            "/etc/passwd",
            "kennel:x:65532:65532:kennel:/nonexistent:/sbin/nologin\n",
            0o644,
        )
        .file("/etc/group", "kennel:x:65532:\n", 0o644)
        .entrypoint(&[PROXY_BIN_IN_IMAGE])
        .user(crate::hardening::PROXY_USER)
        .label("dev.kennel.managed", "true")
        .label("dev.kennel.image", "proxy");
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.is_file() {
        img = img.host_file("/etc/ssl/certs/ca-certificates.crt", ca, 0o644)?;
    }
    Ok(img)
}

/// Builds and loads the proxy image from a static `kennel-proxy` binary (FROM scratch style),
/// tagged `kennel-proxy:<content-hash>`; no-op when the engine already has that tag.
pub async fn ensure_proxy_image(
    docker: &DockerBackend,
    proxy_binary: &Path,
) -> Result<String, ImageError> {
    let img = proxy_rootfs(proxy_binary)?;
    ensure_image(docker, PROXY_REPO, &img).await
}

/// Locates a static kennel-proxy binary: `$KENNEL_PROXY_BIN`, then next to the current
/// executable, then `target/static/…` in the current directory or any ancestor of the current
/// executable, then `/usr/local/lib/kennel/kennel-proxy` and `/usr/lib/kennel/kennel-proxy`.
/// Dynamically linked candidates are skipped (they cannot run in a scratch image).
pub fn find_proxy_binary() -> Result<PathBuf, ImageError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("KENNEL_PROXY_BIN") {
        candidates.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("kennel-proxy"));
        }
        for anc in exe.ancestors().skip(1) {
            candidates.push(anc.join(STATIC_PROXY_REL));
            candidates.push(anc.join("static/x86_64-unknown-linux-gnu/release/kennel-proxy"));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        for anc in cwd.ancestors() {
            candidates.push(anc.join(STATIC_PROXY_REL));
        }
    }
    candidates.push(PathBuf::from("/usr/local/lib/kennel/kennel-proxy"));
    candidates.push(PathBuf::from("/usr/lib/kennel/kennel-proxy"));
    let mut looked = Vec::new();
    for c in candidates {
        if c.is_file() && matches!(elf_interpreter(&c), Ok(None)) {
            return Ok(c);
        }
        looked.push(c.display().to_string());
    }
    looked.dedup();
    Err(ImageError::ProxyBinaryNotFound {
        looked: looked.join(", "),
    })
}
