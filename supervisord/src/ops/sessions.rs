//! Attached exec sessions per environment: counted (the health monitor defers a refresh while
//! one is attached) and reachable, so a refresh can tell each one why it is about to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// Capacity of a notice channel: one notice ends a session, so a few slots are plenty.
const NOTICE_SLOTS: usize = 4;

#[derive(Debug, Default)]
struct Entry {
    attached: usize,
    notices: Option<broadcast::Sender<String>>,
}

/// The attached exec sessions of every environment.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
    /// Environments to remove once their last session ends (`kennel up --rm`): `false` while a
    /// session is attached, `true` once none is.
    remove_when_detached: Arc<Mutex<HashMap<String, bool>>>,
}

/// One attached session; detaches when dropped.
#[derive(Debug)]
pub struct Attached {
    sessions: Sessions,
    env: String,
    /// Notices for this session (the message to show before it ends).
    pub notices: broadcast::Receiver<String>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut map = self.sessions.lock();
        if let Some(e) = map.get_mut(&self.env) {
            e.attached = e.attached.saturating_sub(1);
            if e.attached == 0 {
                map.remove(&self.env);
                drop(map);
                if let Some(due) = self.sessions.removals().get_mut(&self.env) {
                    *due = true;
                }
            }
        }
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock only means a holder panicked; the counts stay consistent (each
        // update is one statement), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a session of `env`.
    pub fn attach(&self, env: &str) -> Attached {
        let mut map = self.lock();
        let e = map.entry(env.to_string()).or_default();
        e.attached += 1;
        let tx = e
            .notices
            .get_or_insert_with(|| broadcast::channel(NOTICE_SLOTS).0);
        Attached {
            sessions: self.clone(),
            env: env.to_string(),
            notices: tx.subscribe(),
        }
    }

    fn removals(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        // As above: each update is one statement.
        self.remove_when_detached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `env` for removal once its last attached session ends (`kennel up --rm`).
    pub fn remove_when_detached(&self, env: &str) {
        let attached = self.attached(env);
        self.removals().insert(env.to_string(), attached == 0);
    }

    /// The environments marked with [`Sessions::remove_when_detached`] whose last session has
    /// ended (and that have none attached now); they are unmarked.
    pub fn take_detached(&self) -> Vec<String> {
        let mut removals = self.removals();
        let due: Vec<String> = removals
            .iter()
            .filter(|(env, due)| **due && self.attached(env) == 0)
            .map(|(env, _)| env.clone())
            .collect();
        for env in &due {
            removals.remove(env);
        }
        due
    }

    /// How many sessions of `env` are attached.
    pub fn attached(&self, env: &str) -> usize {
        self.lock().get(env).map_or(0, |e| e.attached)
    }

    /// Sends `message` to every attached session of `env`; returns how many got it.
    pub fn notify(&self, env: &str, message: &str) -> usize {
        self.lock()
            .get(env)
            .and_then(|e| e.notices.as_ref())
            .and_then(|tx| tx.send(message.to_string()).ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::Sessions;

    #[tokio::test]
    async fn counts_and_notifies_attached_sessions() {
        let s = Sessions::default();
        assert_eq!(s.notify("a", "x"), 0);
        let mut one = s.attach("a");
        let two = s.attach("a");
        assert_eq!(s.attached("a"), 2);
        assert_eq!(s.notify("a", "refreshing"), 2);
        assert_eq!(one.notices.recv().await.ok().as_deref(), Some("refreshing"));
        drop(two);
        assert_eq!(s.attached("a"), 1);
        drop(one);
        assert_eq!(s.attached("a"), 0);
        assert_eq!(s.notify("a", "x"), 0);
    }

    #[test]
    fn an_env_marked_for_removal_is_due_once_its_last_session_ends() {
        let s = Sessions::default();
        let one = s.attach("a");
        s.remove_when_detached("a");
        let two = s.attach("a");
        assert!(s.take_detached().is_empty());
        drop(one);
        assert!(
            s.take_detached().is_empty(),
            "one session is still attached"
        );
        drop(two);
        assert_eq!(s.take_detached(), ["a"]);
        assert!(s.take_detached().is_empty(), "taken once");
    }
}
