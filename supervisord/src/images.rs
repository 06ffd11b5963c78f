//! Images the daemon builds from host files (no registry needed): the proxy image (from the
//! static `kennel-proxy`, see [`kennel_container::image::ensure_proxy_image`]) and a small demo
//! sandbox image, `kennel-sandbox:latest` — the default image of a spec — with busybox-static,
//! curl, the host's CA bundle and the seeds' user `claude` (1001) in group `dev` (2000).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kennel_container::DockerBackend;
use kennel_container::error::{BackendError, ImageError};
use kennel_container::image::{RootfsImage, ensure_image};

/// Repository of the demo sandbox image.
pub const DEMO_SANDBOX_REPO: &str = "kennel-sandbox";

const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "cp",
    "mv",
    "id",
    "ls",
    "touch",
    "sleep",
    "echo",
    "mkdir",
    "rm",
    "env",
    "ps",
    "grep",
    "head",
    "tail",
    "true",
    "false",
    "test",
    "[",
    "wc",
    "stat",
    "tr",
    "sed",
    "awk",
    "find",
    "xargs",
    "uname",
    "whoami",
    "hostname",
    "date",
    "sort",
    "uniq",
    "cut",
    "vi",
    "less",
    "nslookup",
    "wget",
    "nc",
    "df",
    "du",
    "free",
    "top",
    "kill",
    "printf",
    "pwd",
    "basename",
    "dirname",
    "readlink",
    "chmod",
    "ln",
    "tee",
    "which",
    "clear",
    "sha256sum",
    "tar",
    "gzip",
];

fn missing(image: &str, path: &Path, what: &str) -> ImageError {
    ImageError::ReadFile {
        image: image.to_string(),
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{what} is needed on the host (Debian: `apt-get install busybox-static curl ca-certificates`)"
            ),
        ),
    }
}

/// Host libraries a dynamically linked binary needs (`ldd`), including the loader.
fn ldd(image: &str, bin: &Path) -> Result<Vec<PathBuf>, ImageError> {
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

/// The demo sandbox's root file system, from host files.
pub fn demo_sandbox_rootfs() -> Result<RootfsImage, ImageError> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err(missing(DEMO_SANDBOX_REPO, busybox, "busybox-static"));
    }
    let curl = ["/usr/bin/curl", "/bin/curl", "/usr/local/bin/curl"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| missing(DEMO_SANDBOX_REPO, Path::new("/usr/bin/curl"), "curl"))?;
    let mut img = RootfsImage::new()
        .host_file("/bin/busybox", busybox, 0o755)?
        .host_file("/usr/bin/curl", curl, 0o755)?;
    for a in APPLETS {
        img = img.symlink(&format!("/bin/{a}"), "/bin/busybox");
    }
    let libs: BTreeSet<PathBuf> = ldd(DEMO_SANDBOX_REPO, curl)?.into_iter().collect();
    for lib in libs {
        let shown = lib.display().to_string();
        img = img.host_file(&shown, &lib, 0o755)?;
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
        .dir("/home/claude")
        .dir("/workspace")
        .dir("/run")
        .env("PATH=/usr/local/bin:/usr/bin:/bin")
        .env("HOME=/home/claude")
        .workdir("/workspace")
        .label("dev.kennel.image", "demo-sandbox")
        .cmd(&["/bin/busybox", "sleep", "infinity"]))
}

/// Builds and loads the demo sandbox image (`kennel-sandbox:<hash>`) unless present, and tags it
/// `kennel-sandbox:latest`. Returns `kennel-sandbox:latest`.
pub async fn ensure_demo_sandbox_image(docker: &DockerBackend) -> Result<String, ImageError> {
    let img = demo_sandbox_rootfs()?;
    let tag = ensure_image(docker, DEMO_SANDBOX_REPO, &img).await?;
    let options = bollard::query_parameters::TagImageOptionsBuilder::new()
        .repo(DEMO_SANDBOX_REPO)
        .tag("latest")
        .build();
    docker
        .docker()
        .tag_image(&tag, Some(options))
        .await
        .map_err(|e| ImageError::Engine(BackendError::engine("tag image", &tag, e)))?;
    Ok(format!("{DEMO_SANDBOX_REPO}:latest"))
}
