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

/// The other bodies that moved with them keep their JSON too.
#[test]
fn events_notifications_and_ops_bodies_write_back_identically() {
    use kennel_api::events::Event;
    use kennel_api::notify::NotificationBatch;
    use kennel_api::ops::{BenchReport, Check, EnvUsage};

    let event = r#"{"time":"2026-11-30T20:00:00.000Z","unix_ms":1795000000000,"env":"web",
        "kind":"health-rule-fired","message":"health rule max_age fired",
        "details":{"rule":"max_age","value":90000}}"#;
    let (original, written) = round_trip::<Event>(event);
    assert_eq!(written, original);

    let batch = r#"{"notifications":[{"seq":3,"env":"web","level":"complete",
        "message":"done","unix_ms":1795000000000}],"next":3,"missed":1}"#;
    let (original, written) = round_trip::<NotificationBatch>(batch);
    assert_eq!(written, original);

    let check = r#"{"name":"engine","outcome":"warn","detail":"20.10.24","hint":"upgrade"}"#;
    let (original, written) = round_trip::<Check>(check);
    assert_eq!(written, original);

    let usage = r#"{"name":"web","state":"running","age_seconds":60,"containers":[{"name":
        "kennel-web-sandbox","role":"sandbox","state":"running","cpu_percent":1.5,
        "memory_usage_bytes":1,"memory_limit_bytes":2,"pids":3,"pids_limit":4,
        "net_rx_bytes":5,"net_tx_bytes":6,"started_at":"2026-11-30T20:00:00Z"}],
        "workspace_bytes":7,"home_bytes":8,"proxy":{"allowed":9,"denied":10},
        "warnings":["w"]}"#;
    let (original, written) = round_trip::<EnvUsage>(usage);
    assert_eq!(written, original);

    let report = r#"{"env":"web","origin":"172.30.1.2:8080","temporary_allow":"172.30.1.2:8080",
        "proxy":{"path":"proxy","bytes":1,"download_secs":1.0,"mb_per_s":1.0,"connections":1,
        "connect_secs":1.0,"connections_per_s":1.0,"errors":0},
        "direct":{"path":"direct","bytes":1,"download_secs":1.0,"mb_per_s":2.0,"connections":1,
        "connect_secs":1.0,"connections_per_s":2.0,"errors":0},
        "throughput_ratio":0.5,"connection_rate_ratio":0.5}"#;
    let (original, written) = round_trip::<BenchReport>(report);
    assert_eq!(written, original);
}

/// The bench bounds both sides check name the field and its range.
#[test]
fn bench_request_bounds_name_the_field() {
    use kennel_api::ops::BenchRequest;
    let req: BenchRequest = serde_json::from_str(r#"{"clients":0}"#).expect("partial body");
    assert_eq!(req.bytes, BenchRequest::default().bytes);
    let err = req.check_bounds().expect_err("0 clients refused");
    assert!(err.starts_with("clients 0 is out of range"), "{err}");
}
