//! How to allow what was refused: the edits a person makes to the policy file, computed from the
//! policy itself so that a deny message can say exactly what to change. Each hint, applied as
//! said, gives a valid policy that admits the refused request: IP addresses only ever go into
//! `cidrs` (a `hosts` entry cannot hold one), a port outside `[defaults] ports` gets a
//! `[[rule]]` naming it, and a matching `[deny]` entry is named for removal (deny wins over
//! every allow entry).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::addr;
use crate::model::{Policy, RuleRef, net_contains};
use crate::target::{Host, Target};

/// One edit to the policy TOML file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Remove the entry `rule` from `hosts` (`key = "hosts"`) or `cidrs` of the `[deny]` table.
    RemoveDeny {
        /// The deny entry (its file and line, and the pattern as normalised).
        rule: RuleRef,
        /// `"hosts"` or `"cidrs"`.
        key: &'static str,
    },
    /// Add the host name to `hosts` in the `[allow]` table (allowed on `[defaults] ports`).
    AllowHost(String),
    /// Add the range to `cidrs` in the `[allow]` table (on `[defaults] ports` for IP-literal
    /// targets; for the address guard on any port).
    AllowCidr(IpNet),
    /// Add a `[[rule]]` table with `hosts = [host]` and `ports = [port]`.
    RuleHost {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
    /// Add a `[[rule]]` table with `cidrs = [cidr]` and `ports = [port]`.
    RuleCidr {
        /// The range (a single address).
        cidr: IpNet,
        /// The port.
        port: u16,
    },
}

/// The edits that, applied together, make a policy admit a refused request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hint {
    /// In the order they are shown.
    pub edits: Vec<Edit>,
}

impl Hint {
    /// True when there is nothing to suggest.
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// The edits as one sentence fragment, e.g. `add "evil.example" to hosts in the [allow]
    /// table of /etc/kennel/policy.toml`. `file` is how the policy file is shown to the client;
    /// removals name the deny entry's own file and line.
    pub fn render(&self, file: &str) -> String {
        let parts: Vec<String> = self
            .edits
            .iter()
            .map(|e| match e {
                Edit::RemoveDeny { rule, key } => {
                    format!("remove \"{}\" from [deny] {key} at {rule}", rule.pattern)
                }
                Edit::AllowHost(h) => {
                    format!("add \"{h}\" to hosts in the [allow] table of {file}")
                }
                Edit::AllowCidr(c) => {
                    format!("add \"{c}\" to cidrs in the [allow] table of {file}")
                }
                Edit::RuleHost { host, port } => format!(
                    "add a [[rule]] table with hosts = [\"{host}\"] and ports = [{port}] to {file}"
                ),
                Edit::RuleCidr { cidr, port } => format!(
                    "add a [[rule]] table with cidrs = [\"{cidr}\"] and ports = [{port}] to {file}"
                ),
            })
            .collect();
        match parts.split_last() {
            None => String::new(),
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{}, and {last}", rest.join(", ")),
        }
    }

    fn push(&mut self, e: Edit) {
        if !self.edits.contains(&e) {
            self.edits.push(e);
        }
    }
}

impl Policy {
    /// The edits that make [`Policy::decide`] allow `target`: remove every deny entry that
    /// matches it, then allow it on its port unless an allow entry already does.
    pub fn how_to_allow(&self, target: &Target) -> Hint {
        let mut hint = Hint::default();
        let on_default_port = self.default_ports.contains(&target.port);
        match &target.host {
            Host::Name(name) => {
                let mut denied = Vec::new();
                self.deny_idx.find(name, |id| {
                    denied.push(id);
                    false
                });
                denied.sort_unstable();
                for id in denied {
                    hint.push(Edit::RemoveDeny {
                        rule: self.deny[id as usize].clone(),
                        key: "hosts",
                    });
                }
                let allowed = self.allow_idx.find(name, |id| {
                    self.allow[id as usize].ports.contains(&target.port)
                });
                if !allowed {
                    hint.push(if on_default_port {
                        Edit::AllowHost(name.clone())
                    } else {
                        Edit::RuleHost {
                            host: name.clone(),
                            port: target.port,
                        }
                    });
                }
            }
            Host::Ip(ip) => {
                for e in self.deny_cidrs.iter().filter(|e| net_contains(&e.net, *ip)) {
                    hint.push(Edit::RemoveDeny {
                        rule: e.rule.clone(),
                        key: "cidrs",
                    });
                }
                let allowed = self
                    .allow_cidrs
                    .iter()
                    .any(|e| net_contains(&e.net, *ip) && e.ports.contains(&target.port));
                if !allowed {
                    hint.push(if on_default_port {
                        Edit::AllowCidr(IpNet::from(*ip))
                    } else {
                        Edit::RuleCidr {
                            cidr: IpNet::from(*ip),
                            port: target.port,
                        }
                    });
                }
            }
        }
        hint
    }

    /// The edits that make the proxy's address guard accept every one of `ips`: remove the
    /// `[deny] cidrs` entries that match them, and allow each non-public one by a `cidrs`
    /// entry unless one already does.
    pub fn how_to_admit_addresses(&self, ips: &[IpAddr]) -> Hint {
        let mut hint = Hint::default();
        for ip in ips {
            for e in self.deny_cidrs.iter().filter(|e| net_contains(&e.net, *ip)) {
                hint.push(Edit::RemoveDeny {
                    rule: e.rule.clone(),
                    key: "cidrs",
                });
            }
        }
        for ip in ips {
            let allowed = addr::classify(*ip).is_public()
                || self.allow_cidrs.iter().any(|e| net_contains(&e.net, *ip));
            if !allowed {
                hint.push(Edit::AllowCidr(IpNet::from(*ip)));
            }
        }
        hint
    }
}
