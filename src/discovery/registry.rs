//! The live set of instances this node may use. Records (mDNS, unicast answers) are hints;
//! what a node says over its verified connection (its control stream) outranks them: a
//! confirmed instance's health, weight and port come from its node, an mDNS goodbye or a
//! changed record about it is ignored while its node still serves it, and it leaves when its
//! node says so or its connection is lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Instance;
use super::record::sort_addrs;
use crate::names::{Fingerprint, NodeName, ServiceName};
use crate::served::ServiceSet;

/// A node as records and verified connections name it.
pub type NodeKey = (NodeName, Fingerprint);

/// What a verified node says it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// Where its verified connection goes.
    pub remote: SocketAddr,
    /// What it serves.
    pub set: ServiceSet,
}

/// What a record did to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// A new instance.
    New,
    /// A known instance whose record changed.
    Updated,
    /// Nothing new.
    Unchanged,
}

/// What a node's verified word did to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Its node drains (it stops): the record stays, but no new stream goes there.
    Draining,
    /// Its node says, over its verified connection, that it no longer serves it.
    WithdrawnByNode,
    /// Its node lost its verified connection, and another certificate of the same name is
    /// verified: a restarted node's old process.
    Superseded,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Draining => "withdrawn by its node: it is stopping (over its verified connection)",
            Self::WithdrawnByNode => "withdrawn by its node (over its verified connection)",
            Self::Superseded => "superseded: its node restarted (a newer certificate of its name is verified and the old one is gone)",
        })
    }
}

/// What an mDNS goodbye did to the records of one full name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoodbyeOutcome {
    /// No record of that name was known.
    Unknown,
    /// The records were removed (no verified node serves them).
    Removed,
    /// Ignored: the node behind a record still serves it over its verified connection (a
    /// forged or stale goodbye, or one for the other node of a shared name).
    Kept(Vec<NodeKey>),
}

#[derive(Default)]
struct State {
    /// Records, keyed by instance key (full name and certificate).
    hints: BTreeMap<String, Instance>,
    /// What verified nodes serve.
    confirmed: HashMap<NodeKey, Confirmed>,
    /// Nodes that were verified and lost their connection.
    lost: HashSet<NodeKey>,
}

/// The live set of instances; discovery and the control streams write it, consumers read it
/// and wait on its changes.
pub struct Registry {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        }
    }
}

/// The instance as its node confirms it, or `None` when the node says it does not serve it.
fn merged(hint: &Instance, confirmed: Option<&Confirmed>) -> Option<Instance> {
    let Some(c) = confirmed else {
        return Some(hint.clone());
    };
    let served = c.set.get(&hint.service)?;
    let mut inst = hint.clone();
    inst.up = served.up && !c.set.draining;
    inst.weight = served.w;
    inst.port = served.port;
    inst.confirmed = true;
    // The verified address first, whatever a later record claims.
    inst.quic_port = c.remote.port();
    inst.addrs.retain(|ip| *ip != c.remote.ip());
    inst.addrs.insert(0, c.remote.ip());
    Some(inst)
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere; the state itself is always consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Adds or updates a record. Addresses of repeated resolutions of one record (IPv4,
    /// IPv6, loopback...) are merged.
    pub fn upsert(&self, mut inst: Instance) -> Upserted {
        let key = inst.key();
        let mut state = self.lock();
        let outcome = match state.hints.get(&key) {
            Some(old) => {
                if old.quic_port == inst.quic_port {
                    for a in &old.addrs {
                        if !inst.addrs.contains(a) {
                            inst.addrs.push(*a);
                        }
                    }
                    sort_addrs(&mut inst.addrs);
                }
                if *old == inst {
                    return Upserted::Unchanged;
                }
                Upserted::Updated
            }
            None => Upserted::New,
        };
        state.hints.insert(key, inst);
        drop(state);
        self.bump();
        outcome
    }

    /// An mDNS goodbye for `fullname`: only a reason to doubt. Records whose node still
    /// serves them over a verified connection stay; the others go.
    pub fn goodbye(&self, fullname: &str) -> GoodbyeOutcome {
        let mut state = self.lock();
        let State {
            hints, confirmed, ..
        } = &mut *state;
        let mut kept = Vec::new();
        let mut removed = false;
        hints.retain(|_, i| {
            if i.fullname != fullname {
                return true;
            }
            let node = (i.node.clone(), i.fingerprint.clone());
            if confirmed
                .get(&node)
                .is_some_and(|c| !c.set.draining && c.set.get(&i.service).is_some())
            {
                kept.push(node);
                true
            } else {
                removed = true;
                false
            }
        });
        drop(state);
        if removed {
            self.bump();
        }
        match (removed, kept.is_empty()) {
            (_, false) => GoodbyeOutcome::Kept(kept),
            (true, true) => GoodbyeOutcome::Removed,
            (false, true) => GoodbyeOutcome::Unknown,
        }
    }

    /// Removes every record of `fullname` whatever their node says (`ls`, which holds no
    /// connection).
    pub fn remove(&self, fullname: &str) -> bool {
        let mut state = self.lock();
        let before = state.hints.len();
        state.hints.retain(|_, i| i.fullname != fullname);
        let removed = state.hints.len() != before;
        drop(state);
        if removed {
            self.bump();
        }
        removed
    }

    /// Replaces what verified nodes serve (from the control streams). Records that a node no
    /// longer serves are removed, and so are the records of a node that lost its connection
    /// while another certificate of the same name is verified (a restarted node's old
    /// process). Returns the instance keys changed (removed, or now draining), and why.
    pub fn set_confirmed(&self, confirmed: HashMap<NodeKey, Confirmed>) -> Vec<(String, Removed)> {
        let mut state = self.lock();
        if state.confirmed == confirmed {
            return Vec::new();
        }
        let State {
            hints,
            confirmed: previous,
            lost,
        } = &mut *state;
        lost.extend(
            previous
                .keys()
                .filter(|k| !confirmed.contains_key(*k))
                .cloned(),
        );
        let mut removed = Vec::new();
        for i in hints.values() {
            let node = (i.node.clone(), i.fingerprint.clone());
            let was = previous.get(&node).is_some_and(|c| c.set.draining);
            if !was && confirmed.get(&node).is_some_and(|c| c.set.draining) {
                removed.push((i.key(), Removed::Draining));
            }
        }
        let verified_names: HashSet<String> = hints
            .values()
            .filter(|i| confirmed.contains_key(&(i.node.clone(), i.fingerprint.clone())))
            .map(|i| i.fullname.clone())
            .collect();
        hints.retain(|key, i| {
            let node = (i.node.clone(), i.fingerprint.clone());
            let why = match confirmed.get(&node) {
                Some(c) if c.set.get(&i.service).is_none() => Some(Removed::WithdrawnByNode),
                Some(_) => None,
                None if lost.contains(&node) && verified_names.contains(&i.fullname) => {
                    Some(Removed::Superseded)
                }
                None => None,
            };
            match why {
                Some(why) => {
                    removed.push((key.clone(), why));
                    false
                }
                None => true,
            }
        });
        lost.retain(|k| {
            hints
                .values()
                .any(|i| i.node == k.0 && i.fingerprint == k.1)
        });
        *previous = confirmed;
        drop(state);
        self.bump();
        removed
    }

    /// Every usable instance of `service`, as its node confirms it where it can.
    pub fn instances(&self, service: &ServiceName) -> Vec<Instance> {
        let state = self.lock();
        state
            .hints
            .values()
            .filter(|i| &i.service == service)
            .filter_map(|i| {
                let node = (i.node.clone(), i.fingerprint.clone());
                merged(i, state.confirmed.get(&node))
            })
            .collect()
    }

    /// Every record, as discovery saw it.
    pub fn all(&self) -> Vec<Instance> {
        self.lock().hints.values().cloned().collect()
    }

    /// Waits until `pred` holds for the instances of `service` or `deadline` passes; returns
    /// the instances at that moment.
    pub async fn wait_for(
        &self,
        service: &ServiceName,
        deadline: Instant,
        pred: impl Fn(&[Instance]) -> bool,
    ) -> Vec<Instance> {
        let mut rx = self.changed.subscribe();
        loop {
            let now = self.instances(service);
            if pred(&now) {
                return now;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.instances(service),
            }
        }
    }

    /// A receiver notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
