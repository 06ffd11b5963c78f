//! In-memory [`Backend`] for the daemon's unit tests: environments are records, `exec` answers
//! from a scripted table (default: echo the command line to stdout, exit 0).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::backend::{
    Backend, BoxFuture, ContainerStatus, EnvPlan, EnvState, EnvStats, EnvStatus, ExecOutput,
    ExecRequest, ExecResult, ExecSession, ExitHandle, LABEL_ENV, LABEL_MANAGED, LABEL_ROLE, names,
};
use crate::error::BackendError;
use crate::hardening;

#[derive(Default)]
struct State {
    envs: BTreeMap<String, EnvStatus>,
    plans: BTreeMap<String, EnvPlan>,
    scripted: HashMap<Vec<String>, ExecResult>,
    fail_create: Option<String>,
    execs: Vec<(String, ExecRequest)>,
    stats: HashMap<String, EnvStats>,
    /// Home volumes: env name -> workspace label (kept by `remove_env`, removed by `purge_env`).
    homes: BTreeMap<String, String>,
    /// Commands whose exec never ends (until the environment is removed).
    hanging: Vec<Vec<String>>,
    /// Container name -> its output, for `logs`.
    logs: HashMap<String, String>,
    /// Per-container usage, for `container_stats`.
    container_stats: HashMap<String, Vec<crate::backend::ContainerStats>>,
    /// Prometheus text per environment, for `proxy_metrics`.
    metrics: HashMap<String, String>,
    /// Objects that reappear after the next `remove_env` of an environment (and after a delay):
    /// requests a killed daemon sent that the engine finishes late.
    late: HashMap<String, (EnvStatus, std::time::Duration)>,
}

/// In-memory backend. Cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeBackend {
    state: Arc<Mutex<State>>,
    /// Whether the engine answers (`false` between [`FakeBackend::engine_down`] and
    /// [`FakeBackend::engine_up`]).
    engine: Arc<tokio::sync::watch::Sender<bool>>,
    /// Whether creates wait after making the proxy ([`FakeBackend::hold_creates`]).
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for FakeBackend {
    fn default() -> Self {
        FakeBackend {
            state: Arc::default(),
            engine: Arc::new(tokio::sync::watch::channel(true).0),
            held: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBackend").finish_non_exhaustive()
    }
}

impl FakeBackend {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `exec` of exactly `cmd` return `result`.
    pub fn script_exec(&self, cmd: &[&str], result: ExecResult) {
        self.lock()
            .scripted
            .insert(cmd.iter().map(|s| s.to_string()).collect(), result);
    }

    /// Makes the next `create_env` fail with an engine error mentioning `message`.
    pub fn fail_next_create(&self, message: &str) {
        self.lock().fail_create = Some(message.to_string());
    }

    /// Every exec request seen, with the env name.
    pub fn exec_log(&self) -> Vec<(String, ExecRequest)> {
        self.lock().execs.clone()
    }

    /// The plan an environment was created from.
    pub fn plan(&self, name: &str) -> Option<EnvPlan> {
        self.lock().plans.get(name).cloned()
    }

    /// Sets what `stats` reports for an environment (default: an empty [`EnvStats`]).
    pub fn set_stats(&self, name: &str, stats: EnvStats) {
        self.lock().stats.insert(name.to_string(), stats);
    }

    /// Makes `exec` of exactly `cmd` produce no output and never end (an attached session).
    pub fn hang_exec(&self, cmd: &[&str]) {
        self.lock()
            .hanging
            .push(cmd.iter().map(|s| s.to_string()).collect());
    }

    /// Sets what `logs` returns for `container` (as stdout).
    pub fn set_logs(&self, container: &str, text: &str) {
        self.lock()
            .logs
            .insert(container.to_string(), text.to_string());
    }

    /// Sets what `container_stats` reports for an environment.
    pub fn set_container_stats(&self, name: &str, stats: Vec<crate::backend::ContainerStats>) {
        self.lock().container_stats.insert(name.to_string(), stats);
    }

    /// Sets the proxy's `/metrics` text for an environment.
    pub fn set_metrics(&self, name: &str, text: &str) {
        self.lock()
            .metrics
            .insert(name.to_string(), text.to_string());
    }

    /// The engine goes away (`systemctl stop docker`): calls fail with
    /// [`BackendError::Unavailable`], pending [`Backend::engine_gone`] calls resolve, and every
    /// container stops (the engine stops them on its way out). The fake engine does not restart
    /// any when it is back, which is what a restart that failed to bring them back looks like;
    /// [`FakeBackend::set_container_running`] sets up the partial cases.
    pub fn engine_down(&self) {
        let names: Vec<String> = self.lock().envs.keys().cloned().collect();
        for n in names {
            self.stop_env(&n);
        }
        self.engine.send_replace(false);
    }

    /// The engine answers again.
    pub fn engine_up(&self) {
        self.engine.send_replace(true);
    }

    fn engine_answers(&self) -> Result<(), BackendError> {
        if *self.engine.borrow() {
            Ok(())
        } else {
            Err(BackendError::Unavailable {
                detail: "the fake engine is down".into(),
            })
        }
    }

    /// Sets one container of `env` (by role: `proxy`, `sandbox`, or a service's name) running
    /// or exited; the environment's state follows (running, degraded, stopped).
    pub fn set_container_running(&self, env: &str, role_or_service: &str, running: bool) {
        let mut st = self.lock();
        let Some(e) = st.envs.get_mut(env) else {
            return;
        };
        let target = match role_or_service {
            "proxy" => names::proxy(env),
            "sandbox" => names::sandbox(env),
            service => names::service(env, service),
        };
        for c in e.containers.iter_mut().filter(|c| c.name == target) {
            (c.state, c.status) = if running {
                ("running".into(), "Up".into())
            } else {
                ("exited".into(), "Exited (0)".into())
            };
        }
        let up = e.containers.iter().filter(|c| c.state == "running").count();
        e.state = if up == e.containers.len() {
            EnvState::Running
        } else if up == 0 {
            EnvState::Stopped
        } else {
            EnvState::Degraded
        };
    }

    /// From now on `create_env` makes the proxy (the environment shows as incomplete) and then
    /// waits for [`FakeBackend::release_creates`]: a create in flight, for as long as a test
    /// needs.
    pub fn hold_creates(&self) {
        self.held.send_replace(true);
    }

    /// The engine is still working on requests a killed daemon sent for `name` (a network
    /// create, say): `delay` after the next [`Backend::remove_env`] of `name`, an incomplete
    /// environment of that name (its proxy container, no sandbox) appears again. Needs a tokio
    /// runtime.
    pub fn finish_in_flight_after_remove(&self, plan: &EnvPlan, delay: std::time::Duration) {
        self.lock()
            .late
            .insert(plan.spec.name.clone(), (partial_status(plan), delay));
    }

    /// Lets held creates finish.
    pub fn release_creates(&self) {
        self.held.send_replace(false);
    }

    /// Marks an environment's containers stopped (for health/reconcile tests).
    pub fn stop_env(&self, name: &str) {
        if let Some(e) = self.lock().envs.get_mut(name) {
            e.state = EnvState::Stopped;
            for c in &mut e.containers {
                c.state = "exited".into();
                c.status = "Exited (0)".into();
            }
        }
    }
}

/// What the engine has in the middle of a create: the proxy, no sandbox.
fn partial_status(plan: &EnvPlan) -> EnvStatus {
    let mut partial = fake_status(plan);
    partial.containers.retain(|c| c.role == "proxy");
    partial.state = EnvState::Incomplete;
    partial
}

fn fake_status(plan: &EnvPlan) -> EnvStatus {
    let env = &plan.spec.name;
    let mut labels: HashMap<String, String> = plan.state_labels.iter().cloned().collect();
    labels.insert(LABEL_ENV.into(), env.clone());
    labels.insert(LABEL_ROLE.into(), "sandbox".into());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    let mk = |name: String, role: &str, image: &str| ContainerStatus {
        id: format!("fake-{name}"),
        name,
        role: role.into(),
        image: image.into(),
        state: "running".into(),
        status: "Up".into(),
    };
    let mut containers = vec![
        mk(names::proxy(env), "proxy", &plan.proxy_image),
        mk(names::sandbox(env), "sandbox", &plan.spec.image),
    ];
    for s in &plan.spec.services {
        containers.push(mk(names::service(env, &s.name), "service", &s.image));
    }
    for p in &plan.spec.egress.profiles {
        containers.push(mk(
            names::profile_proxy(env, &p.name),
            crate::backend::ROLE_PROFILE_PROXY,
            &plan.proxy_image,
        ));
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    EnvStatus {
        name: env.clone(),
        state: EnvState::Running,
        containers,
        network: names::network(env),
        proxy_address: Some(hardening::proxy_url()),
        created: Some("1970-01-01T00:00:00Z".into()),
        labels,
    }
}

impl Backend for FakeBackend {
    fn create_env<'a>(
        &'a self,
        plan: &'a EnvPlan,
    ) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            self.engine_answers()?;
            let name = plan.spec.name.clone();
            let mut held = self.held.subscribe();
            if *held.borrow_and_update() {
                {
                    let mut st = self.lock();
                    if st.envs.contains_key(&name) {
                        return Err(BackendError::AlreadyExists(name));
                    }
                    st.envs.insert(name.clone(), partial_status(plan));
                }
                // The sender lives as long as `self`, so this only ends on release.
                let _ = held.wait_for(|h| !*h).await;
                self.lock().envs.remove(&name);
            }
            let mut st = self.lock();
            if st.envs.contains_key(&name) {
                return Err(BackendError::AlreadyExists(name));
            }
            if let Some(msg) = st.fail_create.take() {
                return Err(BackendError::engine(
                    "create container",
                    names::sandbox(&name),
                    std::io::Error::other(msg),
                ));
            }
            let status = fake_status(plan);
            st.homes
                .entry(name.clone())
                .or_insert_with(|| plan.spec.workspace.display().to_string());
            st.envs.insert(name.clone(), status.clone());
            st.plans.insert(name, plan.clone());
            Ok(status)
        })
    }

    fn list_envs(&self) -> BoxFuture<'_, Result<Vec<EnvStatus>, BackendError>> {
        Box::pin(async move {
            self.engine_answers()?;
            Ok(self.lock().envs.values().cloned().collect())
        })
    }

    fn inspect_env<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<EnvStatus>, BackendError>> {
        Box::pin(async move {
            self.engine_answers()?;
            Ok(self.lock().envs.get(name).cloned())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.engine_answers() })
    }

    fn engine_gone(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut up = self.engine.subscribe();
            if !*up.borrow_and_update() {
                return self.engine_answers();
            }
            // The sender lives as long as `self`, so this only ends when the engine goes.
            let _ = up.wait_for(|u| !*u).await;
            Ok(())
        })
    }

    fn remove_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut st = self.lock();
            st.envs.remove(name);
            st.plans.remove(name);
            if let Some((late, delay)) = st.late.remove(name) {
                let state = self.state.clone();
                let name = name.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .envs
                        .insert(name, late);
                });
            }
            Ok(())
        })
    }

    fn purge_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.lock().homes.remove(name);
            Ok(())
        })
    }

    fn stop_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            FakeBackend::stop_env(self, name);
            self.lock()
                .envs
                .get(name)
                .cloned()
                .ok_or_else(|| BackendError::NotFound(name.to_string()))
        })
    }

    fn start_env<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<EnvStatus, BackendError>> {
        Box::pin(async move {
            self.engine_answers()?;
            let mut st = self.lock();
            let e = st
                .envs
                .get_mut(name)
                .ok_or_else(|| BackendError::NotFound(name.to_string()))?;
            e.state = EnvState::Running;
            for c in &mut e.containers {
                c.state = "running".into();
                c.status = "Up".into();
            }
            Ok(e.clone())
        })
    }

    fn kept_home<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async move { Ok(self.lock().homes.get(name).cloned()) })
    }

    fn stats<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<EnvStats>, BackendError>> {
        Box::pin(async move {
            let st = self.lock();
            Ok(st
                .envs
                .contains_key(name)
                .then(|| st.stats.get(name).cloned().unwrap_or_default()))
        })
    }

    fn container_stats<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::backend::ContainerStats>, BackendError>> {
        Box::pin(async move {
            let st = self.lock();
            if !st.envs.contains_key(name) {
                return Err(BackendError::NotFound(name.to_string()));
            }
            Ok(st.container_stats.get(name).cloned().unwrap_or_default())
        })
    }

    fn proxy_metrics<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async move { Ok(self.lock().metrics.get(name).cloned()) })
    }

    fn logs<'a>(
        &'a self,
        name: &'a str,
        req: crate::backend::LogsRequest,
    ) -> BoxFuture<'a, Result<crate::backend::ExecOutputStream, BackendError>> {
        Box::pin(async move {
            let st = self.lock();
            if !st.envs.contains_key(name) {
                return Err(BackendError::NotFound(name.to_string()));
            }
            let text = st
                .logs
                .get(&req.target.container(name))
                .cloned()
                .unwrap_or_default();
            let chunk: Result<ExecOutput, BackendError> = Ok(ExecOutput::Stdout(Bytes::from(text)));
            Ok(Box::pin(futures_util::stream::iter(vec![chunk]))
                as crate::backend::ExecOutputStream)
        })
    }

    fn exec<'a>(
        &'a self,
        name: &'a str,
        req: ExecRequest,
    ) -> BoxFuture<'a, Result<ExecSession, BackendError>> {
        Box::pin(async move {
            let result = {
                let mut st = self.lock();
                let Some(env) = st.envs.get(name) else {
                    return Err(BackendError::NotFound(name.to_string()));
                };
                if env.state != EnvState::Running {
                    return Err(BackendError::NotRunning {
                        env: name.to_string(),
                        state: "exited".into(),
                    });
                }
                st.execs.push((name.to_string(), req.clone()));
                if st.hanging.contains(&req.cmd) {
                    return Ok(ExecSession {
                        output: Box::pin(futures_util::stream::pending()),
                        stdin: None,
                        exit: ExitHandle::new(|| Box::pin(async { Ok(137) })),
                        resize: None,
                    });
                }
                st.scripted
                    .get(&req.cmd)
                    .cloned()
                    .unwrap_or_else(|| ExecResult {
                        stdout: format!("{}\n", req.cmd.join(" ")).into_bytes(),
                        stderr: Vec::new(),
                        exit_code: 0,
                    })
            };
            let mut chunks = Vec::new();
            if !result.stdout.is_empty() {
                chunks.push(Ok(ExecOutput::Stdout(Bytes::from(result.stdout))));
            }
            if !result.stderr.is_empty() {
                chunks.push(Ok(ExecOutput::Stderr(Bytes::from(result.stderr))));
            }
            let code = result.exit_code;
            Ok(ExecSession {
                output: Box::pin(futures_util::stream::iter(chunks)),
                stdin: req
                    .stdin
                    .then(|| Box::pin(tokio::io::sink()) as crate::backend::ExecStdin),
                exit: ExitHandle::new(move || Box::pin(async move { Ok(code) })),
                resize: None,
            })
        })
    }
}
