//! An "IDE emulator": starts a dev container from a devcontainer.json the way the Dev
//! Containers spec (containers.dev, and the reference `devcontainer` CLI) says an IDE does, with
//! the real `docker` CLI, so tests see what VS Code or JetBrains would start:
//!
//! 1. `initializeCommand` on the host, in the local workspace folder (a string through `sh -c`,
//!    an array as argv);
//! 2. `docker run -d` with `--mount` for `workspaceMount` and each of `mounts`, the
//!    `devcontainer.*` labels, `-e` for each `containerEnv`, `-u containerUser`, the `runArgs`
//!    verbatim, and with `overrideCommand` (the default for an image) the keep-alive entrypoint
//!    the reference CLI uses, then the `image`;
//! 3. `docker exec -u remoteUser -w workspaceFolder` for what the IDE runs inside.
//!
//! `${localWorkspaceFolder}`, `${localWorkspaceFolderBasename}` and `${localEnv:NAME}` are
//! substituted as the spec says. Only image-based configurations are supported (kennel writes
//! no `build` or `dockerComposeFile`); anything else is a test failure, not a silent skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// One devcontainer.json, ready to start.
#[derive(Debug, Clone)]
pub struct IdeEmulator {
    /// The devcontainer.json read.
    pub file: PathBuf,
    /// The local workspace folder (the folder the IDE opened).
    pub local_folder: PathBuf,
    /// The parsed configuration (variables substituted).
    pub config: Value,
}

/// What a command in the container produced.
#[derive(Debug, Clone)]
pub struct Ran {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn substitute(v: &mut Value, folder: &Path) {
    match v {
        Value::String(s) => {
            let base = folder
                .file_name()
                .map(|b| b.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut out = s
                .replace("${localWorkspaceFolder}", &folder.display().to_string())
                .replace("${localWorkspaceFolderBasename}", &base);
            while let Some(start) = out.find("${localEnv:") {
                let Some(len) = out[start..].find('}') else {
                    break;
                };
                let name = &out[start + "${localEnv:".len()..start + len];
                let value =
                    std::env::var(name.split(':').next().unwrap_or(name)).unwrap_or_default();
                out.replace_range(start..=start + len, &value);
            }
            *s = out;
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, folder)),
        Value::Object(o) => o.values_mut().for_each(|x| substitute(x, folder)),
        _ => {}
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().expect("array of strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

impl IdeEmulator {
    /// Reads `file` (JSONC, as the IDEs read it) for the workspace `local_folder`.
    pub fn load(file: &Path, local_folder: &Path) -> IdeEmulator {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let opts = jsonc_parser::ParseOptions {
            allow_comments: true,
            allow_trailing_commas: true,
            ..Default::default()
        };
        let mut config: Value = jsonc_parser::parse_to_serde_value(&text, &opts)
            .unwrap_or_else(|e| panic!("{} is not JSONC: {e}", file.display()));
        for key in ["build", "dockerFile", "dockerComposeFile"] {
            assert!(
                config.get(key).is_none(),
                "the emulator starts image-based configurations only; {key} is set"
            );
        }
        substitute(&mut config, local_folder);
        IdeEmulator {
            file: file.to_path_buf(),
            local_folder: local_folder.to_path_buf(),
            config,
        }
    }

    /// The container name the IDE will get: `--name=` from `runArgs` (kennel sets one).
    pub fn container_name(&self) -> String {
        strings(&self.config["runArgs"])
            .iter()
            .find_map(|a| a.strip_prefix("--name=").map(str::to_string))
            .expect("runArgs names the container")
    }

    /// Step 1: `initializeCommand` on the host, in the local workspace folder.
    pub fn initialize(&self) -> Ran {
        let mut cmd = match &self.config["initializeCommand"] {
            Value::Null => {
                return Ran {
                    code: 0,
                    stdout: String::new(),
                    stderr: String::new(),
                };
            }
            Value::String(s) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(s);
                c
            }
            v @ Value::Array(_) => {
                let argv = strings(v);
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            other => panic!("initializeCommand {other} is neither a string nor an array"),
        };
        cmd.current_dir(&self.local_folder)
            .output()
            .expect("run initializeCommand")
            .into()
    }

    /// The `docker run` arguments of step 2 (after `docker`), in the reference CLI's order.
    pub fn run_argv(&self) -> Vec<String> {
        let c = &self.config;
        let mut a: Vec<String> = vec!["run".into(), "-d".into(), "--sig-proxy=false".into()];
        let folder = self.local_folder.display().to_string();
        let workspace_mount = c["workspaceMount"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| {
                let base = self
                    .local_folder
                    .file_name()
                    .map(|b| b.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("type=bind,source={folder},target=/workspaces/{base}")
            });
        a.push("--mount".into());
        a.push(workspace_mount);
        for m in strings(&c["mounts"]) {
            a.push("--mount".into());
            a.push(m);
        }
        a.push("-l".into());
        a.push(format!("devcontainer.local_folder={folder}"));
        a.push("-l".into());
        a.push(format!("devcontainer.config_file={}", self.file.display()));
        if let Some(env) = c["containerEnv"].as_object() {
            for (k, v) in env {
                a.push("-e".into());
                a.push(format!(
                    "{k}={}",
                    v.as_str().expect("containerEnv values are strings")
                ));
            }
        }
        if let Some(u) = c["containerUser"].as_str() {
            a.push("-u".into());
            a.push(u.into());
        }
        if c["privileged"].as_bool() == Some(true) {
            a.push("--privileged".into());
        }
        for cap in strings(&c["capAdd"]) {
            a.push(format!("--cap-add={cap}"));
        }
        for o in strings(&c["securityOpt"]) {
            a.push(format!("--security-opt={o}"));
        }
        if c["init"].as_bool() == Some(true) {
            a.push("--init".into());
        }
        a.extend(strings(&c["runArgs"]));
        let image = c["image"].as_str().expect("image").to_string();
        if c["overrideCommand"].as_bool() != Some(false) {
            a.push("--entrypoint".into());
            a.push("/bin/sh".into());
            a.push(image);
            a.push("-c".into());
            a.push("echo Container started\ntrap \"exit 0\" 15\nexec \"$@\"\nwhile sleep 1 & wait $!; do :; done".into());
            a.push("-".into());
        } else {
            a.push(image);
        }
        a
    }

    /// Step 2: starts the container; returns its id. Panics with docker's output on failure.
    pub fn start(&self) -> String {
        let r: Ran = Command::new("docker")
            .args(self.run_argv())
            .output()
            .expect("run docker")
            .into();
        assert_eq!(r.code, 0, "docker run {:?}: {}", self.run_argv(), r.stderr);
        r.stdout.trim().to_string()
    }

    /// Step 3: a command inside, as `remoteUser` in `workspaceFolder`.
    pub fn exec(&self, argv: &[&str]) -> Ran {
        let mut cmd = Command::new("docker");
        cmd.arg("exec");
        if let Some(u) = self.config["remoteUser"].as_str() {
            cmd.args(["-u", u]);
        }
        if let Some(w) = self.config["workspaceFolder"].as_str() {
            cmd.args(["-w", w]);
        }
        if let Some(env) = self.config["remoteEnv"].as_object() {
            for (k, v) in env {
                cmd.arg("-e")
                    .arg(format!("{k}={}", v.as_str().unwrap_or_default()));
            }
        }
        cmd.arg(self.container_name()).args(argv);
        cmd.output().expect("docker exec").into()
    }

    /// `sh -c script` inside ([`IdeEmulator::exec`]).
    pub fn sh(&self, script: &str) -> Ran {
        self.exec(&["/bin/sh", "-c", script])
    }

    /// Removes the container (the IDE's "Rebuild Container" removes the old one first).
    pub fn remove(&self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container_name()])
            .output();
    }
}
