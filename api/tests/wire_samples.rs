//! JSON written before the wire types moved into kennel-api (field names as
//! `kennel_supervisord::api::types` had them) still parses, and writes back identically: the
//! move must not change a byte on the wire.

use kennel_api::types::{CreateEnv, EnvInfo, SpecDoc};
use serde_json::Value;

/// A `POST /v1/envs` body with every field of the spec set, as the CLI wrote it.
const CREATE_ENV: &str = r#"{
  "spec": {
    "name": "demo",
    "image": "kennel-sandbox:latest",
    "workspace": "/home/u/demo",
    "user": "1000:1000",
    "home": "/home/agent",
    "read_only_rootfs": true,
    "cpus": 2.0,
    "memory_bytes": 4294967296,
    "pids": 512,
    "nofile": [1024, 4096],
    "whitelist": "/home/u/demo/.devcontainer/whitelist.txt",
    "upstream": "socks5://127.0.0.1:1080",
    "legacy": {
      "upstream_socks5": "127.0.0.1:1080",
      "upstream_http": "127.0.0.1:3128",
      "upstream_proxy": "http://127.0.0.1:3128",
      "upstream_proxy_type": "http",
      "upstream_proxy_host": "127.0.0.1",
      "upstream_proxy_port": "3128",
      "no_upstream": "internal.example",
      "user_whitelist_domains": "a.example,b.example",
      "origins": {
        "UPSTREAM_HTTP": { "file": "/home/u/demo/.devcontainer/.env", "line": 2, "col": 15 }
      }
    },
    "services": [
      {
        "name": "db",
        "image": "postgres:16",
        "egress_profile": null,
        "env": [["POSTGRES_PASSWORD", "x"]],
        "command": ["postgres"],
        "egress_proxy": true,
        "run": {
          "entrypoint": ["/e"],
          "working_dir": "/srv",
          "user": "999",
          "volumes": [{ "name": "pgdata", "target": "/data", "read_only": false }],
          "binds": [{ "source": "/home/u/demo/sql", "target": "/sql", "read_only": true }],
          "healthcheck": {
            "test": ["CMD", "true"],
            "interval_ms": 500,
            "timeout_ms": 0,
            "retries": 3,
            "start_period_ms": 0
          },
          "depends_on": [{ "service": "cache", "healthy": true }],
          "build": {
            "context": "/home/u/demo/db",
            "dockerfile": "/home/u/demo/db/Dockerfile",
            "args": [["V", "16"]],
            "target": "run"
          },
          "read_only": true,
          "cap_drop": ["NET_RAW"]
        }
      }
    ],
    "max_age_secs": 86400,
    "max_disk_percent": 90,
    "max_memory_percent": 95,
    "health": {
      "command": ["/bin/check"],
      "healthcheck": true,
      "failures": 3,
      "interval_secs": 30,
      "max_defer_secs": 600
    },
    "ttl_secs": 3600,
    "remove_on_exit": true,
    "credentials": {
      "git_config": "/home/u/.gitconfig",
      "ssh_dir": "/home/u/.ssh",
      "agent_config": ["/home/u/.claude"],
      "git_token_file": "/home/u/.git-token",
      "agent_config_copy": ["/home/u/.claude.json"]
    },
    "command": ["sleep", "infinity"],
    "env": {
      "dotenv": [["A", "1"]],
      "container_env": [["B", "2"]],
      "env_file": [["C", "3"]],
      "table": [["D", "4"]]
    },
    "mounts": [{ "source": "/data", "target": "/mnt/data", "rw": true }],
    "name_is_default": true,
    "build": {
      "context": "/home/u/demo",
      "dockerfile": "/home/u/demo/.devcontainer/Dockerfile",
      "args": [],
      "target": null
    },
    "user_name": "vscode",
    "lifecycle": [{ "key": "postCreateCommand", "argv": ["sh", "-c", "make"] }],
    "notify": { "dir": "/workspace/.notifications", "on_denials": true },
    "sandbox_depends_on": [{ "service": "db", "healthy": true }]
  },
  "project_whitelist": "github.com\n"
}"#;

/// A create response with every field set.
const ENV_INFO: &str = r#"{
  "name": "demo",
  "state": "running",
  "network": "kennel-demo-internal",
  "proxy_address": "172.30.0.2:3128",
  "created": "2026-11-30T12:00:00Z",
  "containers": [
    { "name": "kennel-demo-proxy", "role": "proxy", "state": "running", "image": "kennel-proxy:0123" },
    { "name": "kennel-demo-sandbox", "role": "sandbox", "state": "running" }
  ],
  "workspace": "/home/u/demo",
  "image": "kennel-sandbox:latest",
  "policy_dir": "/var/lib/kennel/envs/demo/policy",
  "env_names": ["A", "B"],
  "already_existed": true,
  "warnings": ["commondir"],
  "log": ["built"],
  "expires": "2026-11-30T13:00:00Z",
  "remove_on_exit": true
}"#;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(sample: &str) -> (Value, Value) {
    let parsed: T = serde_json::from_str(sample).expect("the old JSON parses");
    let written = serde_json::to_value(&parsed).expect("serialise");
    let original: Value = serde_json::from_str(sample).expect("sample is JSON");
    (original, written)
}

#[test]
fn create_env_written_by_the_old_code_parses_and_writes_back_identically() {
    let (original, written) = round_trip::<CreateEnv>(CREATE_ENV);
    assert_eq!(written, original);
}

#[test]
fn spec_doc_written_by_the_old_code_parses_and_writes_back_identically() {
    let original: Value = serde_json::from_str(CREATE_ENV).expect("sample is JSON");
    let spec = original["spec"].to_string();
    let (original, written) = round_trip::<SpecDoc>(&spec);
    assert_eq!(written, original);
}

#[test]
fn env_info_written_by_the_old_code_parses_and_writes_back_identically() {
    let (original, written) = round_trip::<EnvInfo>(ENV_INFO);
    assert_eq!(written, original);
}

/// Records written before the optional fields existed (the daemon's state keeps `SpecDoc`s)
/// still parse, with the defaults.
#[test]
fn minimal_spec_doc_parses_with_defaults() {
    let doc: SpecDoc = serde_json::from_str(
        r#"{"name":"old","image":"i","workspace":"/w","user":"1000:1000","home":"/home/agent",
            "read_only_rootfs":false,"cpus":1.0,"memory_bytes":1,"pids":1,"nofile":[1,1]}"#,
    )
    .expect("minimal record parses");
    assert_eq!(doc.notify.dir, "/workspace/.notifications");
    assert!(doc.services.is_empty() && doc.build.is_none() && !doc.remove_on_exit);
}

/// A field the daemon does not know is refused, not ignored (the spec is `deny_unknown_fields`).
#[test]
fn unknown_spec_field_is_refused() {
    let mut v: Value = serde_json::from_str(CREATE_ENV).expect("sample is JSON");
    v["spec"]["no_such_key"] = Value::Bool(true);
    let err = serde_json::from_value::<CreateEnv>(v).expect_err("unknown field refused");
    assert!(err.to_string().contains("no_such_key"), "{err}");
}
