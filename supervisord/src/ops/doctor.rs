//! The daemon's side of `kennel doctor`: `GET /v1/doctor` (the engine, cgroup limits, address
//! pools, state directory, images, the proxy binary) and `POST /v1/envs/{name}/doctor` (the
//! isolation self-test, run from inside the environment's sandbox).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use kennel_container::backend::{EngineFacts, ExecRequest};
use kennel_container::spec::validate_env_name;

use crate::error::ApiError;
use crate::registry::Daemon;

pub use kennel_api::ops::{Check, Outcome, state_dir_check};

/// Docker's built-in `default-address-pools` (when daemon.json sets none): 172.17–31.0.0/16 as
/// /16s and 192.168.0.0/16 as /20s.
const DEFAULT_POOLS: [(&str, u8); 2] = [("172.17.0.0/12", 16), ("192.168.0.0/16", 20)];
/// Where the engine's configuration usually is.
const DOCKER_DAEMON_JSON: &str = "/etc/docker/daemon.json";
/// How long one self-test command may run in the sandbox.
const SELFTEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Parses `a.b.c` (ignoring suffixes like `-ce`, `+dfsg1`).
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.trim_start_matches('v').split(['.', '-', '+', '~']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether an engine version is affected by CVE-2024-29018 (the embedded DNS resolver of an
/// `internal` network forwards queries to the host's resolvers, a DNS exfiltration channel).
/// Fixed in 26.0.0, 25.0.4 and 23.0.11.
pub fn affected_by_cve_2024_29018(version: (u32, u32, u32)) -> bool {
    match version {
        (m, _, _) if m >= 26 => false,
        (25, 0, p) => p < 4,
        (25, _, _) => false,
        (24, _, _) => true,
        (23, 0, p) => p < 11,
        (23, _, _) => false,
        _ => true,
    }
}

fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((u32::from(ip), len))
}

fn contains(pool: (u32, u8), net: (u32, u8)) -> bool {
    let mask = |l: u8| if l == 0 { 0 } else { u32::MAX << (32 - l) };
    net.1 >= pool.1 && (net.0 & mask(pool.1)) == (pool.0 & mask(pool.1))
}

/// How many more networks the pools have room for, given the subnets in use:
/// `(left, total)`.
pub fn networks_left(pools: &[(String, u8)], used: &[String]) -> (u64, u64) {
    let used: Vec<(u32, u8)> = used.iter().filter_map(|s| parse_cidr(s)).collect();
    let (mut left, mut total) = (0u64, 0u64);
    for (base, size) in pools {
        let Some(pool) = parse_cidr(base) else {
            continue;
        };
        if *size < pool.1 || *size > 32 {
            continue;
        }
        let n = 1u64 << (size - pool.1);
        let taken = used.iter().filter(|u| contains(pool, **u)).count() as u64;
        total += n;
        left += n.saturating_sub(taken);
    }
    (left, total)
}

/// The pools from daemon.json's `default-address-pools`, or Docker's defaults.
fn address_pools() -> (Vec<(String, u8)>, &'static str) {
    let parsed = std::fs::read_to_string(DOCKER_DAEMON_JSON)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("default-address-pools").cloned())
        .and_then(|p| p.as_array().cloned())
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some((
                        p.get("base")?.as_str()?.to_string(),
                        u8::try_from(p.get("size")?.as_u64()?).ok()?,
                    ))
                })
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty());
    match parsed {
        Some(p) => (p, DOCKER_DAEMON_JSON),
        None => (
            DEFAULT_POOLS
                .iter()
                .map(|(b, s)| (b.to_string(), *s))
                .collect(),
            "Docker's defaults",
        ),
    }
}

/// The engine's checks from its facts.
pub fn engine_checks(f: &EngineFacts) -> Vec<Check> {
    let mut out = Vec::new();
    match parse_version(&f.version) {
        Some(v) if affected_by_cve_2024_29018(v) => out.push(Check::warn(
            "engine",
            format!(
                "Docker {} (API {}) is affected by CVE-2024-29018: the DNS resolver of internal networks forwards queries to the host's resolvers. kennel's mitigation: the sandbox's DNS server is 127.0.0.1 (nothing answers), so it never uses that resolver and reaches names only through the proxy",
                f.version, f.api_version
            ),
            "upgrade Docker to 26.0.0 or later (or 25.0.4 / 23.0.11)",
        )),
        Some(_) => out.push(Check::pass(
            "engine",
            format!("Docker {} (API {})", f.version, f.api_version),
        )),
        None => out.push(Check::warn(
            "engine",
            format!("unrecognised engine version {:?}", f.version),
            "kennel is tested with Docker Engine; check `docker version`",
        )),
    }
    let missing: Vec<&str> = [
        ("memory", f.memory_limit),
        ("pids", f.pids_limit),
        ("cpu quota", f.cpu_quota),
    ]
    .iter()
    .filter(|(_, ok)| !ok)
    .map(|(n, _)| *n)
    .collect();
    let cg = f.cgroup_version.as_deref().unwrap_or("?");
    if missing.is_empty() {
        out.push(Check::pass(
            "cgroup limits",
            format!("memory, pids and cpu limits enforced (cgroup v{cg})"),
        ));
    } else {
        out.push(Check::fail(
            "cgroup limits",
            format!("not enforced: {} (cgroup v{cg})", missing.join(", ")),
            "enable the cgroup controllers (memory, pids, cpu) in the kernel command line / systemd, then restart Docker; without them a sandbox can exhaust the host",
        ));
    }
    let (pools, source) = address_pools();
    let (left, total) = networks_left(&pools, &f.network_subnets);
    // Two networks per environment at least (internal and egress); each egress profile and a
    // `[docker]` engine add one, which the count of environments that fit cannot know.
    let envs = left / 2;
    let detail = format!(
        "{left} of {total} networks left in the address pools ({source}); each environment uses two, plus one per egress profile and one for its Docker engine, so at most {envs} more fit"
    );
    let hint = "widen `default-address-pools` in /etc/docker/daemon.json (e.g. {\"base\": \"10.200.0.0/14\", \"size\": 24} gives 1024 networks) and restart Docker, or `kennel down` unused environments";
    out.push(match envs {
        0 => Check::fail("address pools", detail, hint),
        1..=2 => Check::warn("address pools", detail, hint),
        _ => Check::pass("address pools", detail),
    });
    out
}

/// The proxy binary the image is built from must be static (the image is `FROM scratch`).
pub fn proxy_binary_check(binary: Option<&Path>) -> Check {
    let name = "proxy binary";
    let Some(p) = binary else {
        return Check::fail(
            name,
            "no kennel-proxy binary found",
            "run scripts/build-proxy-static, or pass --proxy-binary / set KENNEL_PROXY_BIN",
        );
    };
    match kennel_container::image::elf_interpreter(p) {
        Ok(None) => Check::pass(name, format!("{} is static", p.display())),
        Ok(Some(interp)) => Check::fail(
            name,
            format!(
                "{} is dynamically linked (interpreter {interp}); the FROM-scratch proxy image cannot run it",
                p.display()
            ),
            "build it with scripts/build-proxy-static",
        ),
        Err(e) => Check::fail(
            name,
            format!("{}: {e}", p.display()),
            "run scripts/build-proxy-static",
        ),
    }
}

impl Daemon {
    /// `GET /v1/doctor`.
    pub async fn doctor(&self) -> Vec<Check> {
        let mut out = Vec::new();
        match self.backend().engine_facts().await {
            Ok(f) => {
                out.extend(engine_checks(&f));
                let has = |prefix: &str| f.image_tags.iter().any(|t| t.starts_with(prefix));
                let missing: Vec<&str> = ["kennel-proxy:", "kennel-sandbox:"]
                    .into_iter()
                    .filter(|p| !has(p))
                    .collect();
                out.push(if missing.is_empty() {
                    Check::pass("images", "kennel-proxy and kennel-sandbox present")
                } else {
                    Check::warn(
                        "images",
                        format!("not built yet: {}", missing.join(", ").replace(':', "")),
                        "kennel image build proxy; kennel image build demo-sandbox (the proxy image is also built on the first `kennel up`)",
                    )
                });
            }
            Err(e) => out.push(Check::fail(
                "engine",
                format!("not reachable: {e}"),
                "start Docker (systemctl start docker) and make sure the daemon's user may use /var/run/docker.sock",
            )),
        }
        out.push(state_dir_check(
            self.state().root(),
            nix::unistd::geteuid().as_raw(),
        ));
        out.push(proxy_binary_check(self.images().proxy_binary().as_deref()));
        out
    }

    /// `POST /v1/envs/{name}/doctor`: the isolation self-test, from inside the sandbox. Only
    /// the environment's own addresses are contacted: the proxy, a denied name the proxy refuses
    /// before any lookup, and the gateways of its own networks.
    pub async fn selftest(&self, name: &str) -> Result<Vec<Check>, ApiError> {
        self.check_running()?;
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let record = self.state().read_record(name)?;
        if self.managed_status(name, record.as_ref()).await?.is_none() {
            return Err(ApiError::NotFound(name.to_string()));
        }
        let mut out = Vec::new();
        let proxy = kennel_container::hardening::proxy_url();
        let denied = "http://kennel-doctor-denied.invalid/";
        // 1. The proxy answers, and a denied host gets the explanatory 403.
        let script = format!(
            "if command -v curl >/dev/null; then curl -s -D - -o /dev/null --max-time 10 -x {proxy} {denied}; \
             elif command -v wget >/dev/null; then wget -S -O /dev/null -T 10 -e use_proxy=yes -e http_proxy={proxy} {denied} 2>&1; \
             else echo NO-HTTP-CLIENT; fi"
        );
        let r = self.sandbox_sh(name, &script).await;
        let tried = format!("GET {denied} through {proxy}");
        out.push(match r {
            Ok(o) if o.contains("NO-HTTP-CLIENT") => Check::warn(
                "proxy answers",
                format!("{tried}: the image has neither curl nor wget"),
                "add curl or wget to the sandbox image to run this check",
            ),
            Ok(o)
                if o.contains(" 403")
                    && o.to_ascii_lowercase().contains("x-kennel-deny-reason") =>
            {
                Check::pass(
                    "proxy denies",
                    format!("{tried}: 403 with X-Kennel-Deny-Reason"),
                )
            }
            Ok(o) => Check::fail(
                "proxy denies",
                format!(
                    "{tried}: expected 403 with X-Kennel-Deny-Reason, got {:?}",
                    first_line(&o)
                ),
                "check the proxy: kennel logs ENV --proxy; kennel refresh ENV",
            ),
            Err(e) => Check::fail(
                "proxy denies",
                format!("{tried}: {e}"),
                "kennel refresh ENV",
            ),
        });
        // 2. Direct connections to the gateways of the environment's own networks fail.
        let gateways = self.backend().env_gateways(name).await?;
        for gw in gateways {
            let script = format!(
                "if command -v curl >/dev/null; then curl --noproxy '*' -s -o /dev/null --max-time 3 -w '%{{http_code}}' http://{gw}:80/ ; echo \" exit=$?\"; \
                 elif command -v wget >/dev/null; then wget -q -O /dev/null -T 3 -Y off http://{gw}:80/ 2>&1; echo \" exit=$?\"; \
                 else echo NO-HTTP-CLIENT; fi"
            );
            let tried = format!("direct TCP to gateway {gw}:80 (no proxy)");
            out.push(match self.sandbox_sh(name, &script).await {
                Ok(o) if o.contains("NO-HTTP-CLIENT") => Check::warn(
                    "gateway unreachable",
                    format!("{tried}: the image has neither curl nor wget"),
                    "add curl or wget to the sandbox image to run this check",
                ),
                Ok(o) if o.contains(" exit=0") => Check::fail(
                    "gateway unreachable",
                    format!("{tried}: connected ({})", o.trim()),
                    "the sandbox can reach the host directly: recreate the environment (kennel down; kennel up) and report a kennel bug",
                ),
                Ok(o) => Check::pass("gateway unreachable", format!("{tried}: failed as it must ({})", o.trim())),
                Err(e) => Check::fail("gateway unreachable", format!("{tried}: {e}"), "kennel refresh ENV"),
            });
        }
        // 3. Outside names do not resolve. The sandbox's resolver is Docker's embedded one
        //    (127.0.0.11), whose upstream kennel sets to 127.0.0.1 (nothing answers there), or
        //    127.0.0.1 itself. The lookup tried is of a `.invalid` name, so even a broken setup
        //    sends nothing anywhere that could answer it.
        let name_tried = "kennel-doctor-check.invalid";
        let script = format!(
            "while read k v rest; do [ \"$k\" = nameserver ] && echo \"ns=$v\"; done < /etc/resolv.conf; \
             if command -v curl >/dev/null; then curl --noproxy '*' -s -o /dev/null --max-time 8 http://{name_tried}/; echo \"lookup-exit=$?\"; \
             elif command -v nslookup >/dev/null; then nslookup {name_tried} >/dev/null 2>&1; echo \"lookup-exit=$?\"; fi"
        );
        let tried = format!("nameservers in /etc/resolv.conf, then a lookup of {name_tried}");
        let allowed_ns = ["127.0.0.11", kennel_container::hardening::SANDBOX_DNS];
        out.push(match self.sandbox_sh(name, &script).await {
            Ok(o) => {
                let servers: Vec<&str> = o.lines().filter_map(|l| l.strip_prefix("ns=")).collect();
                let lookup = o.lines().find_map(|l| l.strip_prefix("lookup-exit="));
                let ns_ok = !servers.is_empty() && servers.iter().all(|s| allowed_ns.contains(s));
                // curl: 6 = could not resolve, 28 = timed out resolving; nslookup: non-zero.
                let lookup_ok = lookup.is_none_or(|c| c != "0");
                let detail = format!(
                    "{tried}: nameservers {}, lookup {}",
                    servers.join(" "),
                    lookup.map_or("not tried (no curl or nslookup)".to_string(), |c| if c == "0" { "RESOLVED".to_string() } else { format!("failed (exit {c})") })
                );
                if ns_ok && lookup_ok {
                    Check::pass("names do not resolve", detail)
                } else {
                    Check::fail(
                        "names do not resolve",
                        format!("{detail}; expected only {} and no answer", allowed_ns.join(" or ")),
                        "recreate the environment (kennel refresh ENV); the sandbox's resolver upstream must be 127.0.0.1",
                    )
                }
            }
            Err(e) => Check::fail("names do not resolve", format!("{tried}: {e}"), "kennel refresh ENV"),
        });
        // 4. Capabilities are 0.
        let script = "while read k v; do case \"$k\" in CapInh:|CapPrm:|CapEff:|CapBnd:|CapAmb:) echo \"$k $v\";; esac; done < /proc/self/status";
        let tried = "Cap* lines of /proc/self/status".to_string();
        out.push(match self.sandbox_sh(name, script).await {
            Ok(o) => {
                let caps: Vec<&str> = o.lines().collect();
                let all_zero = !caps.is_empty()
                    && caps.iter().all(|l| l.split_whitespace().nth(1).is_some_and(|v| v.chars().all(|c| c == '0')));
                if all_zero {
                    Check::pass("capabilities", format!("{tried}: all 0"))
                } else {
                    Check::fail(
                        "capabilities",
                        format!("{tried}: {}", caps.join(", ")),
                        "the sandbox must run with no capabilities: recreate it (kennel refresh ENV)",
                    )
                }
            }
            Err(e) => Check::fail("capabilities", format!("{tried}: {e}"), "kennel refresh ENV"),
        });
        // 5. The environment's own Docker engine: its mode and risk, and that it answers on
        //    the socket the sandbox has.
        if let Some(d) = record.as_ref().and_then(|r| r.request.spec.docker) {
            let mode = kennel_api::spec::DockerMode::as_str(d.mode);
            out.push(match d.mode {
                kennel_api::spec::DockerMode::Privileged => Check::warn(
                    "docker engine mode",
                    format!("{mode}: {}", d.mode.risk()),
                    "use `[docker] mode = \"rootless\"` where the host allows it (docs/environments.md)",
                ),
                kennel_api::spec::DockerMode::Rootless => {
                    Check::pass("docker engine mode", format!("{mode}: {}", d.mode.risk()))
                }
            });
            let script = "docker version --format 'server={{.Server.Version}}' 2>&1";
            let tried = format!(
                "`docker version` in the sandbox (DOCKER_HOST={})",
                kennel_container::engine::DOCKER_HOST
            );
            out.push(match self.sandbox_sh(name, script).await {
                Ok(o) if o.contains("server=") => Check::pass(
                    "docker engine answers",
                    format!("{tried}: {}", first_line(o.trim())),
                ),
                Ok(o) => Check::fail(
                    "docker engine answers",
                    format!("{tried}: {}", first_line(o.trim())),
                    "see `docker logs kennel-ENV-docker` on the host; kennel refresh ENV",
                ),
                Err(e) => Check::fail(
                    "docker engine answers",
                    format!("{tried}: {e}"),
                    "kennel refresh ENV",
                ),
            });
        }
        Ok(out)
    }

    /// Runs `script` with `/bin/sh -c` in the sandbox; stdout and stderr together.
    async fn sandbox_sh(&self, env: &str, script: &str) -> Result<String, String> {
        let req = ExecRequest {
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            workdir: Some("/".into()),
            ..Default::default()
        };
        let run = async {
            let s = self.backend().exec(env, req).await?;
            s.collect().await
        };
        let r = tokio::time::timeout(SELFTEST_TIMEOUT, run)
            .await
            .map_err(|_| format!("no answer within {SELFTEST_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        Ok(format!("{}{}", r.stdout_str(), r.stderr_str()))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cve_2024_29018_versions() {
        for v in ["20.10.24", "23.0.10", "24.0.9", "25.0.3"] {
            assert!(affected_by_cve_2024_29018(parse_version(v).unwrap()), "{v}");
        }
        for v in ["23.0.11", "25.0.4", "26.0.0", "27.3.1"] {
            assert!(
                !affected_by_cve_2024_29018(parse_version(v).unwrap()),
                "{v}"
            );
        }
        assert_eq!(parse_version("20.10.24+dfsg1"), Some((20, 10, 24)));
    }

    #[test]
    fn networks_left_counts_pool_room() {
        let pools = vec![
            ("172.17.0.0/12".to_string(), 16),
            ("192.168.0.0/16".to_string(), 20),
        ];
        let (left, total) = networks_left(
            &pools,
            &[
                "172.17.0.0/16".into(),
                "192.168.16.0/20".into(),
                "10.0.0.0/8".into(),
            ],
        );
        assert_eq!(total, 16 + 16);
        assert_eq!(left, 30);
    }

    #[test]
    fn state_dir_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = state_dir_check(d.path(), uid);
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.hint.unwrap().contains("chmod 0700"));
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(state_dir_check(d.path(), uid).outcome, Outcome::Pass);
        assert_eq!(
            state_dir_check(&d.path().join("nope"), uid).outcome,
            Outcome::Fail
        );
    }
}
