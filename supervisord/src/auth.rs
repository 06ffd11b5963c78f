//! Caller authorisation from the peer credentials (`SO_PEERCRED`) of a Unix-socket connection.
//!
//! The rule: root, the daemon's own uid, every configured user, and every member (primary or
//! supplementary group) of a configured group may use the API. Everybody else gets `403`.

use std::collections::BTreeSet;

/// Who is on the other end of a connection, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Process id of the connecting process (`None` when the kernel did not report one).
    pub pid: Option<i32>,
    /// Effective uid of the connecting process.
    pub uid: u32,
    /// Effective primary gid of the connecting process.
    pub gid: u32,
    /// Supplementary groups of the connecting process (from `/proc/<pid>/status`), if known.
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the peer credentials of a connected Unix stream (`SO_PEERCRED`) and the peer's
    /// supplementary groups from `/proc/<pid>/status`.
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid();
        let groups = pid.map(supplementary_groups).unwrap_or_default();
        Ok(Peer {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
            groups,
        })
    }
}

/// Reads the `Groups:` line of `/proc/<pid>/status`; empty when it cannot be read.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    parse_groups_line(&status)
}

/// Parses the `Groups:` line of a `/proc/<pid>/status` text.
fn parse_groups_line(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The set of callers allowed to use the API.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    daemon_uid: u32,
    users: BTreeSet<u32>,
    groups: BTreeSet<u32>,
}

/// Why a caller was refused; its Display is the message the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("uid {uid} (gid {gid}) is not allowed to use kennel-supervisord")]
pub struct Denied {
    /// The refused uid.
    pub uid: u32,
    /// The refused primary gid.
    pub gid: u32,
}

impl Authorizer {
    /// An authoriser allowing root, `daemon_uid`, the given uids, and members of the given gids.
    pub fn new(
        daemon_uid: u32,
        users: impl IntoIterator<Item = u32>,
        groups: impl IntoIterator<Item = u32>,
    ) -> Authorizer {
        Authorizer {
            daemon_uid,
            users: users.into_iter().collect(),
            groups: groups.into_iter().collect(),
        }
    }

    /// Allowed gids (for messages and for the socket's group).
    pub fn groups(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.iter().copied()
    }

    /// Decides whether `peer` may use the API.
    pub fn authorize(&self, peer: &Peer) -> Result<(), Denied> {
        let allowed = peer.uid == 0
            || peer.uid == self.daemon_uid
            || self.users.contains(&peer.uid)
            || self.groups.contains(&peer.gid)
            || peer.groups.iter().any(|g| self.groups.contains(g));
        if allowed {
            Ok(())
        } else {
            Err(Denied {
                uid: peer.uid,
                gid: peer.gid,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: Some(1),
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_and_daemon_uid_are_always_allowed() {
        let a = Authorizer::new(999, [], []);
        assert!(a.authorize(&peer(0, 0, &[])).is_ok());
        assert!(a.authorize(&peer(999, 999, &[])).is_ok());
        assert_eq!(
            a.authorize(&peer(1000, 1000, &[])),
            Err(Denied {
                uid: 1000,
                gid: 1000
            })
        );
    }

    #[test]
    fn configured_users_and_groups_are_allowed() {
        let a = Authorizer::new(0, [1000], [2000]);
        assert!(a.authorize(&peer(1000, 1000, &[])).is_ok(), "allowed user");
        assert!(a.authorize(&peer(1001, 2000, &[])).is_ok(), "primary group");
        assert!(
            a.authorize(&peer(1002, 1002, &[5, 2000])).is_ok(),
            "supplementary group"
        );
        assert!(a.authorize(&peer(1003, 1003, &[5, 6])).is_err(), "stranger");
    }

    #[test]
    fn denied_message_names_the_caller() {
        let a = Authorizer::new(0, [], []);
        let err = a.authorize(&peer(1234, 77, &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "uid 1234 (gid 77) is not allowed to use kennel-supervisord"
        );
    }

    #[test]
    fn parses_proc_status_groups() {
        let status =
            "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nNgid:\t0\n";
        assert_eq!(parse_groups_line(status), vec![4, 24, 27, 1000]);
        assert_eq!(parse_groups_line("Name: x\n"), Vec::<u32>::new());
        assert_eq!(parse_groups_line("Groups:\n"), Vec::<u32>::new());
    }
}
