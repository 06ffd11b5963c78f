//! The one mapping between the environment spec ([`EnvSpec`]) and its wire form
//! ([`kennel_api::types::SpecDoc`]), used by the CLI to send a spec and by the daemon to read it.

use std::time::Duration;

use kennel_api::types::{
    CredentialsDoc, EnvDoc, HealthDoc, LegacyDoc, MountDoc, OriginDoc, ProfileDoc, ServiceDoc,
    SpecDoc,
};
use kennel_policy::LegacyEnv;

use crate::env::SandboxEnv;
use crate::spec::{
    CredentialMounts, Egress, EgressProfile, EnvSpec, HealthSpec, HostMount, Resources,
    ServiceEgress, ServiceSpec,
};

impl From<&EgressProfile> for ProfileDoc {
    fn from(p: &EgressProfile) -> Self {
        ProfileDoc {
            name: p.name.clone(),
            include: p.include.clone(),
            lists: p.lists.clone(),
            upstream: p.upstream.clone(),
        }
    }
}

impl From<ProfileDoc> for EgressProfile {
    fn from(d: ProfileDoc) -> Self {
        EgressProfile {
            name: d.name,
            include: d.include,
            lists: d.lists,
            upstream: d.upstream,
        }
    }
}

impl From<&SandboxEnv> for EnvDoc {
    fn from(e: &SandboxEnv) -> Self {
        EnvDoc {
            dotenv: e.dotenv.clone(),
            container_env: e.container_env.clone(),
            env_file: e.env_file.clone(),
            table: e.table.clone(),
        }
    }
}

impl From<EnvDoc> for SandboxEnv {
    fn from(d: EnvDoc) -> Self {
        SandboxEnv {
            dotenv: d.dotenv,
            container_env: d.container_env,
            env_file: d.env_file,
            table: d.table,
        }
    }
}

impl From<&EnvSpec> for SpecDoc {
    fn from(s: &EnvSpec) -> SpecDoc {
        let l = &s.egress.legacy;
        SpecDoc {
            name: s.name.clone(),
            image: s.image.clone(),
            workspace: s.workspace.clone(),
            user: s.user.clone(),
            home: s.home.clone(),
            read_only_rootfs: s.read_only_rootfs,
            cpus: s.resources.cpus,
            memory_bytes: s.resources.memory_bytes,
            pids: s.resources.pids,
            nofile: s.resources.nofile,
            whitelist: s.egress.whitelist.clone(),
            upstream: s.egress.upstream.clone(),
            legacy: LegacyDoc {
                upstream_socks5: l.upstream_socks5.clone(),
                upstream_http: l.upstream_http.clone(),
                upstream_proxy: l.upstream_proxy.clone(),
                upstream_proxy_type: l.upstream_proxy_type.clone(),
                upstream_proxy_host: l.upstream_proxy_host.clone(),
                upstream_proxy_port: l.upstream_proxy_port.clone(),
                origins: l
                    .origins
                    .iter()
                    .map(|(k, o)| {
                        (
                            (*k).to_string(),
                            OriginDoc {
                                file: o.file.clone(),
                                line: o.line,
                                col: o.col,
                            },
                        )
                    })
                    .collect(),
                no_upstream: l.no_upstream.clone(),
                user_whitelist_domains: l.user_whitelist_domains.clone(),
            },
            egress_profiles: s.egress.profiles.iter().map(ProfileDoc::from).collect(),
            services: s
                .services
                .iter()
                .map(|v| ServiceDoc {
                    name: v.name.clone(),
                    image: v.image.clone(),
                    egress_profile: match &v.egress {
                        ServiceEgress::None | ServiceEgress::Proxy => None,
                        ServiceEgress::Profile(p) => Some(p.clone()),
                    },
                    env: v.env.clone(),
                    command: v.command.clone(),
                    egress_proxy: v.egress == ServiceEgress::Proxy,
                    run: v.run.clone(),
                })
                .collect(),
            max_age_secs: s.health.max_age.map(|d| d.as_secs()),
            max_disk_percent: s.health.max_disk_percent,
            max_memory_percent: s.health.max_memory_percent,
            health: HealthDoc {
                command: s.health.command.clone(),
                healthcheck: s.health.healthcheck,
                failures: s.health.failures,
                interval_secs: s.health.interval.map(|d| d.as_secs().max(1)),
                max_defer_secs: s.health.max_defer.map(|d| d.as_secs()),
            },
            // Not part of the spec file: `kennel up` sets them from its flags.
            ttl_secs: None,
            remove_on_exit: false,
            credentials: CredentialsDoc {
                git_config: s.credentials.git_config.clone(),
                ssh_dir: s.credentials.ssh_dir.clone(),
                agent_config: s.credentials.agent_config.clone(),
                git_token_file: s.credentials.git_token_file.clone(),
                agent_config_copy: s.credentials.agent_config_copy.clone(),
            },
            command: s.command.clone(),
            env: EnvDoc::from(&s.env),
            mounts: s
                .mounts
                .iter()
                .map(|m| MountDoc {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    rw: m.rw,
                })
                .collect(),
            name_is_default: s.name_is_default,
            build: s.build.clone(),
            user_name: s.user_name.clone(),
            lifecycle: s.lifecycle.clone(),
            notify: s.notify.clone(),
            sandbox_depends_on: s.sandbox_depends_on.clone(),
            docker: s.docker,
        }
    }
}

impl From<SpecDoc> for EnvSpec {
    fn from(d: SpecDoc) -> EnvSpec {
        let mut legacy = LegacyEnv::default();
        legacy.upstream_socks5 = d.legacy.upstream_socks5;
        legacy.upstream_http = d.legacy.upstream_http;
        legacy.upstream_proxy = d.legacy.upstream_proxy;
        legacy.upstream_proxy_type = d.legacy.upstream_proxy_type;
        legacy.upstream_proxy_host = d.legacy.upstream_proxy_host;
        legacy.upstream_proxy_port = d.legacy.upstream_proxy_port;
        for (name, o) in d.legacy.origins {
            // Unknown names are dropped: they can only carry a position, never a value.
            legacy.set_origin(
                &name,
                kennel_policy::Origin {
                    file: o.file,
                    line: o.line,
                    col: o.col,
                },
            );
        }
        legacy.no_upstream = d.legacy.no_upstream;
        legacy.user_whitelist_domains = d.legacy.user_whitelist_domains;
        EnvSpec {
            name: d.name,
            image: d.image,
            workspace: d.workspace,
            user: d.user,
            home: d.home,
            read_only_rootfs: d.read_only_rootfs,
            resources: Resources {
                cpus: d.cpus,
                memory_bytes: d.memory_bytes,
                pids: d.pids,
                nofile: d.nofile,
            },
            egress: Egress {
                whitelist: d.whitelist,
                upstream: d.upstream,
                legacy,
                profiles: d.egress_profiles.into_iter().map(Into::into).collect(),
            },
            services: d
                .services
                .into_iter()
                .map(|v| ServiceSpec {
                    name: v.name,
                    image: v.image,
                    egress: match v.egress_profile {
                        Some(p) => ServiceEgress::Profile(p),
                        None if v.egress_proxy => ServiceEgress::Proxy,
                        None => ServiceEgress::None,
                    },
                    env: v.env,
                    command: v.command,
                    run: v.run,
                })
                .collect(),
            health: HealthSpec {
                max_age: d.max_age_secs.map(Duration::from_secs),
                max_disk_percent: d.max_disk_percent,
                max_memory_percent: d.max_memory_percent,
                command: d.health.command,
                healthcheck: d.health.healthcheck,
                failures: d.health.failures,
                interval: d.health.interval_secs.map(Duration::from_secs),
                max_defer: d.health.max_defer_secs.map(Duration::from_secs),
            },
            credentials: CredentialMounts {
                git_config: d.credentials.git_config,
                ssh_dir: d.credentials.ssh_dir,
                agent_config: d.credentials.agent_config,
                git_token_file: d.credentials.git_token_file,
                agent_config_copy: d.credentials.agent_config_copy,
            },
            command: d.command,
            env: d.env.into(),
            mounts: d
                .mounts
                .into_iter()
                .map(|m| HostMount {
                    source: m.source,
                    target: m.target,
                    rw: m.rw,
                })
                .collect(),
            name_is_default: d.name_is_default,
            build: d.build,
            user_name: d.user_name,
            lifecycle: d.lifecycle,
            sandbox_depends_on: d.sandbox_depends_on,
            docker: d.docker,
            // Warnings are the CLI's to show; the daemon has nothing to add.
            warnings: Vec::new(),
            notify: d.notify,
        }
    }
}

#[cfg(test)]
mod compose_wire_tests {
    use crate::spec::{
        DependsOn, EnvSpec, ServiceEgress, ServiceHealthcheck, ServiceRun, ServiceSpec,
        ServiceVolume,
    };

    use kennel_api::types::SpecDoc;

    /// A compose service's settings and the sandbox's depends_on survive the trip to the daemon.
    #[test]
    fn compose_services_round_trip_through_the_wire_form() {
        let mut spec = EnvSpec::parse_str(
            "name = \"wire\"\n",
            std::path::Path::new("/kennel.toml"),
            std::path::Path::new("/"),
        )
        .expect("spec");
        spec.services.push(ServiceSpec {
            name: "db".into(),
            image: "postgres:16".into(),
            egress: ServiceEgress::Proxy,
            env: vec![("A".into(), "1".into())],
            command: Some(vec!["postgres".into()]),
            run: ServiceRun {
                entrypoint: Some(vec!["/e".into()]),
                working_dir: Some("/srv".into()),
                user: Some("999".into()),
                volumes: vec![ServiceVolume {
                    name: "pgdata".into(),
                    target: "/data".into(),
                    read_only: false,
                }],
                healthcheck: Some(ServiceHealthcheck {
                    test: vec!["CMD".into(), "true".into()],
                    interval_ms: 500,
                    timeout_ms: 0,
                    retries: 3,
                    start_period_ms: 0,
                }),
                depends_on: vec![DependsOn {
                    service: "x".into(),
                    healthy: true,
                }],
                ..Default::default()
            },
        });
        spec.sandbox_depends_on = vec![DependsOn {
            service: "db".into(),
            healthy: true,
        }];
        let json = serde_json::to_string(&SpecDoc::from(&spec)).expect("serialise");
        let back: EnvSpec = serde_json::from_str::<SpecDoc>(&json)
            .expect("deserialise")
            .into();
        assert_eq!(back.services, spec.services);
        assert_eq!(back.sandbox_depends_on, spec.sandbox_depends_on);
    }

    /// `[docker]` reaches the daemon (the engine is created from the daemon's copy of the spec).
    #[test]
    fn docker_engine_round_trips_through_the_wire_form() {
        use crate::spec::{DockerMode, DockerSpec};
        let mut spec = EnvSpec::parse_str(
            "name = \"wire\"\n",
            std::path::Path::new("/kennel.toml"),
            std::path::Path::new("/"),
        )
        .expect("spec");
        assert_eq!(spec.docker, None);
        let json = serde_json::to_string(&SpecDoc::from(&spec)).expect("serialise");
        assert!(
            !json.contains("docker"),
            "absent [docker] is not sent: {json}"
        );
        spec.docker = Some(DockerSpec {
            mode: DockerMode::Rootless,
        });
        let json = serde_json::to_string(&SpecDoc::from(&spec)).expect("serialise");
        assert!(json.contains(r#""docker":{"mode":"rootless"}"#), "{json}");
        let back: EnvSpec = serde_json::from_str::<SpecDoc>(&json)
            .expect("deserialise")
            .into();
        assert_eq!(back.docker, spec.docker);
    }
}
