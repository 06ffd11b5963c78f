//! Typed errors of the container crate. Every variant names the operation and the object it was
//! working on, so a message alone tells a person what failed and where.

use std::path::PathBuf;

/// Errors reading or validating an environment spec (`kennel.toml`, or the seed layout).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file (or a file it names) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spec file is not valid TOML, has an unknown key, or a value of the wrong type or
    /// range. Display: `FILE:LINE:COL: key `k`: what is wrong`.
    #[error("{}:{line}:{column}: {}{message}", path.display(), key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        /// The spec file.
        path: PathBuf,
        /// 1-based line.
        line: u32,
        /// 1-based column.
        column: u32,
        /// The key at fault, when known (dotted path, e.g. `resources.memory`).
        key: Option<String>,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A value given outside a file (CLI override, directory name) is invalid.
    #[error("{what}: {message}")]
    InvalidValue {
        /// Which value (e.g. `environment name "Foo"`).
        what: String,
        /// What is wrong and what is expected.
        message: String,
    },
    /// The seed layout's `.devcontainer/.env` could not be parsed or is invalid.
    #[error("{message}")]
    Legacy {
        /// The dotenv file.
        path: PathBuf,
        /// The policy crate's message (it names the file, line and column).
        message: String,
    },
}

/// The underlying engine error type carried by [`BackendError::Engine`].
pub type EngineSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors talking to the container engine.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// An environment with this name already exists (HTTP 409 in the daemon's API).
    #[error(
        "environment {0:?} already exists; remove it first (`kennel down {0}`) or pick another name"
    )]
    AlreadyExists(String),
    /// No environment (or object) with this name exists.
    #[error("environment {0:?} not found")]
    NotFound(String),
    /// The engine cannot be reached at all.
    #[error("cannot reach the Docker engine ({detail}); check that it runs: `docker version`")]
    Unavailable {
        /// What failed.
        detail: String,
    },
    /// An engine call failed. `op` is the operation (`create network`, `start container` …),
    /// `object` the Docker object's name.
    #[error("failed to {op} {object}: {source}")]
    Engine {
        /// The operation.
        op: &'static str,
        /// The object (network / container / image name or exec id).
        object: String,
        /// The engine's error.
        source: EngineSource,
    },
    /// The plan cannot be turned into Docker objects (e.g. a path that is not absolute).
    #[error("invalid plan for environment {env:?}: {message}")]
    InvalidPlan {
        /// The environment.
        env: String,
        /// What is wrong.
        message: String,
    },
    /// Building the workspace's image failed (the message carries the end of the build output).
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    /// The environment's proxy container exited or did not answer on its admin port in time:
    /// kennel's own component failed, not the caller's request.
    #[error("proxy container {container} {what} (admin port {admin}); its last log lines:\n{logs}")]
    ProxyNotReady {
        /// The environment.
        env: String,
        /// The proxy container's name.
        container: String,
        /// "exited" or "did not become ready in time".
        what: &'static str,
        /// The admin address waited for.
        admin: String,
        /// The end of the container's log.
        logs: String,
    },
    /// The sandbox is not running, so it cannot run a command.
    #[error("environment {env:?} is not running (sandbox state: {state})")]
    NotRunning {
        /// The environment.
        env: String,
        /// The sandbox container's state.
        state: String,
    },
}

impl BackendError {
    /// Wraps an engine error with the operation and object it concerns.
    pub fn engine(
        op: &'static str,
        object: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BackendError::Engine {
            op,
            object: object.into(),
            source: Box::new(source),
        }
    }
}

/// Errors building or importing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host file that goes into the image could not be read.
    #[error("cannot read {} for image {image}: {source}", path.display())]
    ReadFile {
        /// The image being built.
        image: String,
        /// The host file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing the image tarball failed.
    #[error("cannot assemble image {image}: {source}")]
    Assemble {
        /// The image being built.
        image: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine refused the image.
    #[error(transparent)]
    Engine(#[from] BackendError),
    /// The kennel-proxy binary was not found.
    #[error(
        "kennel-proxy binary not found (looked in: {looked}); build it with `scripts/build-proxy-static` or set KENNEL_PROXY_BIN"
    )]
    ProxyBinaryNotFound {
        /// The places searched.
        looked: String,
    },
    /// The proxy binary is dynamically linked and would not run in a FROM-scratch image.
    #[error(
        "{} is dynamically linked (interpreter {interp}); build it static: RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p kennel-proxy --target x86_64-unknown-linux-gnu",
        path.display()
    )]
    NotStatic {
        /// The binary.
        path: PathBuf,
        /// Its ELF interpreter.
        interp: String,
    },
    /// A host program an image is built from is missing.
    #[error(
        "{tool} is needed on the host for image {image} (looked in: {looked}); install it (Debian: `apt-get install {package}`)"
    )]
    HostToolMissing {
        /// The image being built.
        image: String,
        /// The program.
        tool: String,
        /// The places searched.
        looked: String,
        /// The Debian package that provides it.
        package: String,
    },
}
