//! Images the daemon builds from host files (no registry needed): the proxy image (from the
//! static `kennel-proxy`, see [`kennel_container::image::ensure_proxy_image`]) and a small demo
//! sandbox image, `kennel-sandbox:latest` — the default image of a spec — with busybox-static,
//! curl, the host's docker CLI (when there is one), the host's CA bundle and the seeds' user `claude` (1001) in group `dev` (2000).

use std::path::Path;

use kennel_container::DockerBackend;
use kennel_container::error::{BackendError, ImageError};
use kennel_container::image::{RootfsImage, busybox_rootfs, ensure_image};

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
    // The docker CLI for environments with an engine of their own (`[docker]`, the seed layout
    // with dind-whitelist.txt), when the host has one.
    let docker = ["/usr/bin/docker", "/usr/local/bin/docker"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file());
    let tools: Vec<&Path> = std::iter::once(curl).chain(docker).collect();
    Ok(busybox_rootfs(DEMO_SANDBOX_REPO, APPLETS, &tools)?
        .dir("/home/claude")
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
