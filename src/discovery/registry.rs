//! The live set of instances this node may use. Records (mDNS, unicast answers) are hints;
//! what a node says over its verified connection (its control stream) outranks them: a
//! confirmed instance's health, weight and port come from its node, an mDNS goodbye or a
//! changed record about it is ignored while its node still serves it, and it leaves when its
//! node says so or its connection is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Instance;
use super::record::sort_addrs;
use crate::metrics::DiscoveryMeter;
use crate::names::{Fingerprint, HostName, NodeName, ServiceName};
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
pub enum Change {
    /// Its node confirmed it over its verified connection.
    Confirmed,
    /// Its node's verified connection is gone: the record is a hint again.
    Unconfirmed,
    /// Its node drains (it stops): the record stays, but no new stream goes there.
    Draining,
    /// Its node says, over its verified connection, that it no longer serves it.
    WithdrawnByNode,
    /// Its node lost its verified connection, and another certificate of the same name is
    /// verified: a restarted node's old process.
    Superseded,
}

impl Change {
    /// The discovery event it is, for metrics.
    pub fn event(self) -> &'static str {
        match self {
            Self::WithdrawnByNode | Self::Superseded => "removed",
            Self::Confirmed | Self::Unconfirmed | Self::Draining => "updated",
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Confirmed => "confirmed by its node over its verified connection",
            Self::Unconfirmed => "its node's verified connection is gone: a record again (ejected until a probe reaches it)",
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
    /// Ignored: another source (mDNS, etcd) still carries the record.
    HeldElsewhere,
}

#[derive(Default)]
struct State {
    /// Records, keyed by instance key (full name and certificate).
    hints: BTreeMap<String, Instance>,
    /// What verified nodes serve.
    confirmed: HashMap<NodeKey, Confirmed>,
    /// Nodes that were verified and lost their connection.
    lost: HashSet<NodeKey>,
    /// Which sources carry each record, by full name: a record that two sources carry goes
    /// only when both have withdrawn it.
    held: HashMap<String, BTreeSet<&'static str>>,
}

/// The live set of instances; discovery and the control streams write it, consumers read it
/// and wait on its changes.
pub struct Registry {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Counts records added, removed and updated (source `mdns`), and what verified nodes'
    /// word changed (source `mesh`).
    meter: DiscoveryMeter,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(DiscoveryMeter::detached("mdns"))
    }
}

/// Most alternate addresses kept per instance.
const MAX_ALTERNATES: usize = 8;

/// A record of a known instance that changed its addresses or port keeps the old ones as
/// alternates (newest first): one forged answer cannot replace an address that works.
fn keep_alternates(old: &Instance, new: &mut Instance) {
    let current: Vec<SocketAddr> = new
        .addrs
        .iter()
        .map(|ip| SocketAddr::new(*ip, new.quic_port))
        .collect();
    let previous = old
        .addrs
        .iter()
        .map(|ip| SocketAddr::new(*ip, old.quic_port))
        .chain(old.alternates.iter().copied());
    let mut alternates = Vec::new();
    for a in previous {
        if !current.contains(&a) && !alternates.contains(&a) {
            alternates.push(a);
        }
    }
    alternates.truncate(MAX_ALTERNATES);
    new.alternates = alternates;
}

/// What a new word of the verified nodes changes in the records that stay: confirmed now,
/// unconfirmed (the node's connection is gone), or draining.
fn word_changes(
    hints: &BTreeMap<String, Instance>,
    previous: &HashMap<NodeKey, Confirmed>,
    confirmed: &HashMap<NodeKey, Confirmed>,
) -> Vec<(String, Change)> {
    let mut changes = Vec::new();
    for i in hints.values() {
        let node = i.node_key();
        let (was, now) = (previous.get(&node), confirmed.get(&node));
        let serves = |c: Option<&Confirmed>| {
            c.is_some_and(|c| c.set.get(&i.service, i.tag.as_ref()).is_some())
        };
        let draining = |c: Option<&Confirmed>| c.is_some_and(|c| c.set.draining);
        if !serves(was) && serves(now) {
            changes.push((i.key(), Change::Confirmed));
        }
        if serves(was) && now.is_none() {
            changes.push((i.key(), Change::Unconfirmed));
        }
        if !draining(was) && draining(now) {
            changes.push((i.key(), Change::Draining));
        }
    }
    changes
}

/// The instance as its node confirms it, or `None` when the node says it does not serve it.
fn merged(hint: &Instance, confirmed: Option<&Confirmed>) -> Option<Instance> {
    let Some(c) = confirmed else {
        return Some(hint.clone());
    };
    let served = c.set.get(&hint.service, hint.tag.as_ref())?;
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
    /// An empty registry whose changes are counted by `meter` (its source: the records').
    pub fn new(meter: DiscoveryMeter) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            meter,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere; the state itself is always consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Adds or updates a record. Addresses of repeated resolutions of one record (IPv4,
    /// IPv6, loopback...) are merged.
    pub fn upsert(&self, inst: Instance) -> Upserted {
        self.upsert_counted(inst, &self.meter)
    }

    /// [`Registry::upsert`] of a record from another source, counted by its `meter`. One
    /// instance named alike by two sources (mDNS and etcd) is one record, their addresses
    /// merged.
    pub fn upsert_counted(&self, mut inst: Instance, meter: &DiscoveryMeter) -> Upserted {
        let key = inst.key();
        let mut state = self.lock();
        state
            .held
            .entry(inst.fullname.clone())
            .or_default()
            .insert(meter.source());
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
                keep_alternates(old, &mut inst);
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
        let event = if outcome == Upserted::New {
            "added"
        } else {
            "updated"
        };
        meter.count(event, 1);
        outcome
    }

    /// An mDNS goodbye for `fullname`: only a reason to doubt. Records whose node still
    /// serves them over a verified connection stay; the others go.
    pub fn goodbye(&self, fullname: &str) -> GoodbyeOutcome {
        self.goodbye_counted(fullname, &self.meter)
    }

    /// [`Registry::goodbye`] from another source (an etcd key deleted), counted by its `meter`.
    pub fn goodbye_counted(&self, fullname: &str, meter: &DiscoveryMeter) -> GoodbyeOutcome {
        let mut state = self.lock();
        if let Some(sources) = state.held.get_mut(fullname) {
            sources.remove(meter.source());
            let elsewhere = !sources.is_empty();
            if elsewhere && state.hints.values().any(|i| i.fullname == fullname) {
                return GoodbyeOutcome::HeldElsewhere;
            }
            state.held.remove(fullname);
        }
        let State {
            hints, confirmed, ..
        } = &mut *state;
        let mut kept = Vec::new();
        let mut removed = false;
        let before = hints.len();
        hints.retain(|_, i| {
            if i.fullname != fullname {
                return true;
            }
            let node = i.node_key();
            if confirmed
                .get(&node)
                .is_some_and(|c| !c.set.draining && c.set.get(&i.service, i.tag.as_ref()).is_some())
            {
                kept.push(node);
                true
            } else {
                removed = true;
                false
            }
        });
        let gone = before - state.hints.len();
        drop(state);
        if removed {
            self.bump();
            meter.count("removed", gone as u64);
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
        state.held.remove(fullname);
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
    pub fn set_confirmed(&self, confirmed: HashMap<NodeKey, Confirmed>) -> Vec<(String, Change)> {
        let mut state = self.lock();
        if state.confirmed == confirmed {
            return Vec::new();
        }
        let State {
            hints,
            confirmed: previous,
            lost,
            ..
        } = &mut *state;
        lost.extend(
            previous
                .keys()
                .filter(|k| !confirmed.contains_key(*k))
                .cloned(),
        );
        let mut removed = word_changes(hints, previous, &confirmed);
        let verified_names: HashSet<String> = hints
            .values()
            .filter(|i| confirmed.contains_key(&i.node_key()))
            .map(|i| i.fullname.clone())
            .collect();
        hints.retain(|key, i| {
            let node = i.node_key();
            let why = match confirmed.get(&node) {
                Some(c) if c.set.get(&i.service, i.tag.as_ref()).is_none() => {
                    Some(Change::WithdrawnByNode)
                }
                Some(_) => None,
                None if lost.contains(&node) && verified_names.contains(&i.fullname) => {
                    Some(Change::Superseded)
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
        lost.retain(|k| hints.values().any(|i| i.node_key() == *k));
        *previous = confirmed;
        drop(state);
        self.bump();
        let mesh = self.meter.for_source("mesh");
        for (_, why) in &removed {
            mesh.count(why.event(), 1);
        }
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
                let node = i.node_key();
                merged(i, state.confirmed.get(&node))
            })
            .collect()
    }

    /// Every record, as discovery saw it.
    pub fn all(&self) -> Vec<Instance> {
        self.lock().hints.values().cloned().collect()
    }

    /// The service of an HTTP application that answers to `host`, if a record names it
    /// (looked up in place: the HTTP front asks at every request).
    pub fn http_service(&self, host: &HostName) -> Option<ServiceName> {
        self.lock()
            .hints
            .values()
            .find(|i| i.http_hosts.contains(host))
            .map(|i| i.service.clone())
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::discovery::TxtRecord;
    use crate::names::MeshId;
    use crate::served::ServiceState;

    fn svc() -> ServiceName {
        ServiceName::parse("redis").unwrap()
    }

    fn record(fp: char, port: u16, up: bool) -> Instance {
        let txt = TxtRecord {
            service: svc(),
            port: 6379,
            node: NodeName::parse("b").unwrap(),
            mesh: MeshId::parse("0123456789abcdef").unwrap(),
            fingerprint: Fingerprint::parse(&fp.to_string().repeat(64)).unwrap(),
            weight: 1,
            up,
            tag: None,
            http_hosts: Vec::new(),
        };
        let ip: IpAddr = "10.77.0.2".parse().unwrap();
        Instance::new("redis@b_01234567._ambassador._udp.local.", port, [ip], txt).unwrap()
    }

    fn serving(i: &Instance, up: bool, draining: bool) -> HashMap<NodeKey, Confirmed> {
        let set = ServiceSet {
            draining,
            services: vec![ServiceState {
                svc: svc(),
                port: 6379,
                w: 5,
                up,
                tag: None,
            }],
        };
        let remote = SocketAddr::new(i.addrs[0], 4433);
        HashMap::from([(i.node_key(), Confirmed { remote, set })])
    }

    #[test]
    fn a_record_two_sources_carry_goes_when_both_withdraw_it() {
        let r = Registry::default();
        let etcd = DiscoveryMeter::detached("etcd");
        let inst = record('a', 4433, true);
        let fullname = inst.fullname.clone();
        assert_eq!(r.upsert(inst.clone()), Upserted::New);
        assert_eq!(r.upsert_counted(inst.clone(), &etcd), Upserted::Unchanged);
        // The etcd key expires (a lease lost in a partition): mDNS still announces it.
        assert_eq!(
            r.goodbye_counted(&fullname, &etcd),
            GoodbyeOutcome::HeldElsewhere
        );
        assert_eq!(r.instances(&svc()).len(), 1);
        // Then the node says goodbye on mDNS too.
        assert_eq!(r.goodbye(&fullname), GoodbyeOutcome::Removed);
        assert!(r.instances(&svc()).is_empty());

        // Carried by etcd alone: an mDNS goodbye (forged, or stale) does not remove it; the
        // etcd key's deletion does.
        r.upsert_counted(inst, &etcd);
        assert_eq!(r.goodbye(&fullname), GoodbyeOutcome::HeldElsewhere);
        assert_eq!(r.goodbye_counted(&fullname, &etcd), GoodbyeOutcome::Removed);
        assert_eq!(r.goodbye(&fullname), GoodbyeOutcome::Unknown);
    }

    #[test]
    fn a_verified_node_outranks_its_records() {
        let r = Registry::default();
        let real = record('a', 4433, true);
        assert_eq!(r.upsert(real.clone()), Upserted::New);
        let changes = r.set_confirmed(serving(&real, true, false));
        assert_eq!(changes, vec![(real.key(), Change::Confirmed)]);
        let got = &r.instances(&svc())[0];
        assert!(got.confirmed && got.up && got.weight == 5);

        // A forged h=down and a redirected port change nothing while the node serves it.
        r.upsert(record('a', 9999, false));
        let got = &r.instances(&svc())[0];
        assert!(got.up, "h=down from a record is ignored");
        assert_eq!(got.quic_port, 4433, "the verified port stays");

        // A forged goodbye is ignored.
        let fullname = real.fullname.clone();
        assert!(matches!(r.goodbye(&fullname), GoodbyeOutcome::Kept(_)));
        assert_eq!(r.instances(&svc()).len(), 1);

        // The node's own word: target down, then draining.
        r.set_confirmed(serving(&real, false, false));
        assert!(!r.instances(&svc())[0].up);
        let changes = r.set_confirmed(serving(&real, true, true));
        assert_eq!(changes, vec![(real.key(), Change::Draining)]);
        assert!(
            !r.instances(&svc())[0].up,
            "a draining node takes no new stream"
        );
        // A goodbye of a draining node removes it.
        assert_eq!(r.goodbye(&fullname), GoodbyeOutcome::Removed);
        assert!(r.instances(&svc()).is_empty());
    }

    #[test]
    fn records_alone_follow_goodbyes_and_a_node_withdraws_over_quic() {
        let r = Registry::default();
        let a = record('a', 4433, true);
        r.upsert(a.clone());
        assert_eq!(r.goodbye(&a.fullname), GoodbyeOutcome::Removed);
        assert_eq!(r.goodbye(&a.fullname), GoodbyeOutcome::Unknown);

        r.upsert(a.clone());
        let mut none = serving(&a, true, false);
        for c in none.values_mut() {
            c.set.services.clear();
        }
        let changes = r.set_confirmed(none);
        assert_eq!(changes, vec![(a.key(), Change::WithdrawnByNode)]);
        assert!(r.all().is_empty());
    }

    #[test]
    fn a_restarted_node_supersedes_its_old_process() {
        let r = Registry::default();
        let (old, new) = (record('a', 4433, true), record('b', 4434, true));
        r.upsert(old.clone());
        r.set_confirmed(serving(&old, true, false));
        r.upsert(new.clone());
        assert_eq!(r.instances(&svc()).len(), 2, "one name, two certificates");
        // The old connection is dropped, the new node is verified: the old record goes.
        let changes = r.set_confirmed(serving(&new, true, false));
        assert!(
            changes.contains(&(old.key(), Change::Superseded)),
            "{changes:?}"
        );
        assert!(
            changes.contains(&(new.key(), Change::Confirmed)),
            "{changes:?}"
        );
        let left = r.instances(&svc());
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].fingerprint, new.fingerprint);
    }
}
