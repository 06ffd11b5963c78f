//! `POST /v1/envs/{name}/refresh`: recreate an environment's containers from its stored spec.

use std::time::Duration;

use kennel_container::backend::{EnvPlan, LABEL_CREATED_BY, LABEL_EGRESS_ONLY};
use kennel_container::spec::{EnvSpec, validate_env_name};

use crate::api::types::EnvInfo;
use crate::error::ApiError;
use crate::events::{Event, EventNow, kind};
use crate::registry::{Daemon, LABEL_DAEMON};
use crate::state::EnvRecord;

/// How long a refresh lets the attached sessions' streams deliver the notice before the
/// containers go (the notice is one small frame on a local socket).
const NOTICE_GRACE: Duration = Duration::from_millis(300);

/// The message an attached exec session ends with.
pub fn refresh_notice(env: &str) -> String {
    format!(
        "environment {env:?} is being refreshed (`kennel refresh`): its containers are recreated, so this session ended. /workspace and the home directory are kept; run the command again once the refresh is done"
    )
}

/// The image step of a refresh. Today the sandbox image is used as recorded; this is the hook
/// where an image built from the workspace (devcontainer) is rebuilt when its context changed,
/// returning the spec with the new tag.
pub async fn rebuild_image_if_changed(spec: EnvSpec) -> Result<EnvSpec, ApiError> {
    Ok(spec)
}

impl Daemon {
    /// `POST /v1/envs/{name}/refresh`: tells attached exec sessions why they end, then
    /// recreates the containers (and networks) from the stored spec. The workspace, home volume,
    /// effective policy directory and name are kept; the containers' own filesystems are not.
    pub async fn refresh(&self, name: &str) -> Result<EnvInfo, ApiError> {
        self.refresh_because(name, "kennel refresh").await
    }

    /// [`Daemon::refresh`], recording `reason` in the `refreshed` (or `refresh-failed`) event.
    #[tracing::instrument(skip(self))]
    pub async fn refresh_because(&self, name: &str, reason: &str) -> Result<EnvInfo, ApiError> {
        self.check_running()?;
        validate_env_name(name).map_err(|_| ApiError::NotFound(name.to_string()))?;
        let _busy = self.mark_busy(name).await?;
        let Some(mut record) = self.state().read_record(name)? else {
            return Err(ApiError::NotFound(name.to_string()));
        };
        let plan = self.refresh_plan(&record).await?;
        let told = self.sessions().notify(name, &refresh_notice(name));
        if told > 0 {
            tokio::time::sleep(NOTICE_GRACE).await;
        }
        // A failure after the old containers went leaves the environment `missing` or
        // incomplete; the record and policy stay, so running the refresh again recovers it
        // (removal is idempotent).
        let (status, builds) =
            kennel_container::build::collecting_builds(self.backend().refresh_env(&plan)).await;
        self.images_built(name, &builds);
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(env = %name, error = %e, "refresh failed; `kennel refresh` again recreates it");
                self.event(
                    Event::now(
                        Some(name),
                        kind::REFRESH_FAILED,
                        format!("refreshing {name:?} ({reason}) failed: {e}; `kennel refresh {name}` again recreates it"),
                    )
                    .with("reason", reason)
                    .with("error", e.to_string()),
                );
                return Err(e.into());
            }
        };
        // After, not before: until now the old proxy (with its own counts) was there.
        self.proxy_created(name);
        // Recreated and started: a `kennel stop` before no longer holds.
        self.state().clear_stopped(name)?;
        if record.proxy_image != plan.proxy_image {
            record.proxy_image = plan.proxy_image.clone();
            self.state().write_record(&record)?;
        }
        tracing::info!(env = %name, sessions_told = told, "environment refreshed");
        self.event(
            Event::now(
                Some(name),
                kind::REFRESHED,
                format!("environment {name:?} refreshed ({reason})"),
            )
            .with("reason", reason)
            .with("sessions_ended", told),
        );
        Ok(self.info(status, Some(&record)))
    }

    /// The plan `create` made, rebuilt from the record: the recorded (validated, canonical)
    /// spec, the effective policy directory as it is now, the current proxy image.
    pub(crate) async fn refresh_plan(&self, record: &EnvRecord) -> Result<EnvPlan, ApiError> {
        let spec: EnvSpec = record.request.spec.clone().into();
        let spec = rebuild_image_if_changed(spec).await?;
        let policy_dir = self.state().policy_dir(&record.name);
        if !policy_dir
            .join(kennel_container::policy_dir::POLICY_FILE)
            .is_file()
        {
            return Err(ApiError::Internal(format!(
                "{} has no policy.toml; the environment's state is damaged (`kennel down` then `kennel up` recreates it)",
                policy_dir.display()
            )));
        }
        // The profiles' policy directories are kept as they are (with their `kennel allow
        // --profile` changes), like the environment's own; one missing is damage too.
        for p in &spec.egress.profiles {
            let dir = kennel_container::policy_dir::profile_policy_dir(&policy_dir, &p.name);
            if !dir
                .join(kennel_container::policy_dir::POLICY_FILE)
                .is_file()
            {
                return Err(ApiError::Internal(format!(
                    "{} (egress profile {:?}) has no policy.toml; the environment's state is damaged (`kennel down` then `kennel up` recreates it)",
                    dir.display(),
                    p.name
                )));
            }
        }
        crate::policy_ops::prepare_profile_log_dirs(self.state(), &record.name, &spec)?;
        let proxy_image = self.images().proxy_image().await?;
        let mut spec = spec;
        let notify_mounts = self.prepare_notifications(&record.name, &spec)?;
        spec.mounts.extend(notify_mounts);
        // An egress-only environment (`kennel up --egress-only`) stays one: the label says so.
        let egress_only = self
            .backend()
            .inspect_env(&record.name)
            .await?
            .is_some_and(|s| s.labels.get(LABEL_EGRESS_ONLY).is_some_and(|v| v == "true"));
        let mut plan = EnvPlan {
            // The same access-log directory as at creation, so `kennel denials` keeps its history.
            access_log_dir: Some(crate::policy_ops::log_dir(self.state(), &record.name)),
            // Nobody is listening to a refresh's build output; the build reuses the content tag.
            progress: None,
            spec,
            policy_dir,
            proxy_image,
            state_labels: vec![
                (
                    LABEL_CREATED_BY.to_string(),
                    record.created_by_uid.to_string(),
                ),
                (
                    LABEL_DAEMON.to_string(),
                    self.state().instance().to_string(),
                ),
            ],
        };
        if egress_only {
            plan.state_labels
                .push((LABEL_EGRESS_ONLY.to_string(), "true".to_string()));
        }
        Ok(plan)
    }
}
