//! Load balancing and passive health: which instance a new connection goes to, and which are
//! ejected for a while after failing.
//!
//! Policies: smooth weighted round-robin (nginx's), least connections by power of two choices
//! weighted by `w`, and weighted random. A failure (refusal, failed stream, lost peer) ejects an
//! instance for a back-off that doubles on repeated failures up to a cap; a success re-admits
//! it at once. When every instance is ejected the least recently ejected is still tried, so a
//! recovered instance is found without waiting for its back-off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;
use tracing::info;

use crate::metrics::InstanceLabels;

/// How new connections are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// Fewest open connections relative to weight (power of two random choices).
    #[default]
    LeastConn,
    /// Weighted random.
    Random,
}

impl std::fmt::Display for Policy {
    /// As users type it (`least-conn`), in status and logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round-robin",
            Self::LeastConn => "least-conn",
            Self::Random => "random",
        })
    }
}

/// Back-off of ejected instances.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// First ejection.
    pub base: Duration,
    /// Longest ejection.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

/// What the balancer needs to know of an instance.
#[derive(Debug, Clone)]
pub(crate) struct Choice<'a> {
    /// Stable key of the instance.
    pub key: &'a str,
    /// Its weight (≥ 1).
    pub weight: u32,
}

#[derive(Debug, Default)]
struct State {
    open: u64,
    total: u64,
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejected until proven healthy (its peer is lost), whatever the time.
    held: bool,
    last_failure: Option<String>,
    /// When the last failure happened.
    last_failure_at: Option<std::time::SystemTime>,
    /// Smooth weighted round-robin: the running weight.
    current: i64,
}

/// Health and load of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InstanceStats {
    /// Instance key.
    pub instance: String,
    /// `healthy` or `ejected`.
    pub health: &'static str,
    /// Open connections now.
    pub open: u64,
    /// Connections carried since start.
    pub total: u64,
    /// Consecutive failures.
    pub failures: u32,
    /// The last failure, if any.
    pub last_failure: Option<String>,
    /// When it happened.
    pub last_failure_at: Option<std::time::SystemTime>,
}

impl InstanceStats {
    /// An instance no connection has used yet.
    pub(crate) fn fresh(key: &str) -> Self {
        Self {
            instance: key.to_string(),
            health: "healthy",
            open: 0,
            total: 0,
            failures: 0,
            last_failure: None,
            last_failure_at: None,
        }
    }
}

/// Where a balancer counts its ejections and re-admissions (the service's metric families).
#[derive(Debug, Clone)]
pub(crate) struct BalanceMeters {
    /// The service.
    pub service: String,
    /// Ejections by instance.
    pub ejections: Family<InstanceLabels, Counter>,
    /// Re-admissions by instance.
    pub readmissions: Family<InstanceLabels, Counter>,
}

impl BalanceMeters {
    fn count(&self, family: &Family<InstanceLabels, Counter>, key: &str) {
        let labels = InstanceLabels {
            service: self.service.clone(),
            instance: key.to_string(),
        };
        family.get_or_create(&labels).inc();
    }
}

/// The balancer of one service (or one node: keys are unique per instance).
#[derive(Debug)]
pub(crate) struct Balancer {
    policy: Policy,
    backoff: Backoff,
    state: Mutex<HashMap<String, State>>,
    rng: Mutex<u64>,
    meters: Option<BalanceMeters>,
}

/// Marks one open connection; dropping it closes the count.
#[derive(Debug)]
pub(crate) struct OpenGuard<'a> {
    balancer: &'a Balancer,
    key: String,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.balancer.lock();
        if let Some(s) = map.get_mut(&self.key) {
            s.open = s.open.saturating_sub(1);
        }
    }
}

impl Balancer {
    /// A balancer with `policy` and `backoff`.
    pub(crate) fn new(policy: Policy, backoff: Backoff) -> Self {
        // Seed the small PRNG from the clock; it only spreads load, it guards nothing.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Self {
            policy,
            backoff,
            state: Mutex::new(HashMap::new()),
            rng: Mutex::new(seed),
            meters: None,
        }
    }

    /// The same balancer, counting its ejections and re-admissions in `meters`.
    pub(crate) fn with_meters(mut self, meters: BalanceMeters) -> Self {
        self.meters = Some(meters);
        self
    }

    fn count_ejection(&self, key: &str) {
        if let Some(m) = &self.meters {
            m.count(&m.ejections, key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn random(&self, below: u64) -> u64 {
        let mut x = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        // xorshift64*
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
    }

    /// Picks one of `choices` (an index), preferring instances that are not ejected.
    pub(crate) fn pick(&self, choices: &[Choice<'_>]) -> Option<usize> {
        if choices.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut map = self.lock();
        let healthy: Vec<usize> = (0..choices.len())
            .filter(|&i| {
                map.get(choices[i].key)
                    .is_none_or(|s| !s.held && s.ejected_until.is_none_or(|t| t <= now))
            })
            .collect();
        if healthy.is_empty() {
            // All ejected: try the one whose ejection ends first (lost peers last).
            return (0..choices.len())
                .min_by_key(|&i| map.get(choices[i].key).map(|s| (s.held, s.ejected_until)));
        }
        let pick = match self.policy {
            Policy::RoundRobin => {
                let total: i64 = healthy.iter().map(|&i| i64::from(choices[i].weight)).sum();
                let mut best = healthy[0];
                let mut best_w = i64::MIN;
                for &i in &healthy {
                    let s = map.entry(choices[i].key.to_string()).or_default();
                    s.current += i64::from(choices[i].weight);
                    if s.current > best_w {
                        best_w = s.current;
                        best = i;
                    }
                }
                if let Some(s) = map.get_mut(choices[best].key) {
                    s.current -= total;
                }
                best
            }
            Policy::Random | Policy::LeastConn => {
                drop(map);
                let a = self.weighted_random(choices, &healthy);
                if self.policy == Policy::Random || healthy.len() == 1 {
                    a
                } else {
                    let b = self.weighted_random(choices, &healthy);
                    let map = self.lock();
                    let load = |i: usize| {
                        let open = map.get(choices[i].key).map_or(0, |s| s.open);
                        // Compare open / weight without floats; ties keep the first sample,
                        // so an idle pool is spread by weight.
                        open * 10_000 / u64::from(choices[i].weight.max(1))
                    };
                    if load(b) < load(a) { b } else { a }
                }
            }
        };
        Some(pick)
    }

    fn weighted_random(&self, choices: &[Choice<'_>], among: &[usize]) -> usize {
        let total: u64 = among.iter().map(|&i| u64::from(choices[i].weight)).sum();
        let mut r = self.random(total);
        for &i in among {
            let w = u64::from(choices[i].weight);
            if r < w {
                return i;
            }
            r -= w;
        }
        among[0]
    }

    /// Counts a connection opened on `key`; the guard counts it closed.
    pub(crate) fn opened(&self, key: &str) -> OpenGuard<'_> {
        let mut map = self.lock();
        let s = map.entry(key.to_string()).or_default();
        s.open += 1;
        OpenGuard {
            balancer: self,
            key: key.to_string(),
        }
    }

    /// Records a success (a connection carried): a failed instance is re-admitted at once.
    pub(crate) fn succeeded(&self, key: &str) {
        self.lock().entry(key.to_string()).or_default().total += 1;
        self.readmit(key);
    }

    /// Re-admits an instance that proved healthy (e.g. its peer answers a probe again).
    pub(crate) fn readmit(&self, key: &str) {
        let mut map = self.lock();
        let s = map.entry(key.to_string()).or_default();
        if s.failures > 0 || s.ejected_until.is_some() {
            info!(instance = key, "instance healthy again: re-admitted");
            if let Some(m) = &self.meters {
                m.count(&m.readmissions, key);
            }
        }
        s.failures = 0;
        s.ejected_until = None;
        s.held = false;
    }

    /// Ejects an instance whose peer is lost until [`Balancer::succeeded`] re-admits it (a
    /// prober re-dials the peer in the background).
    pub(crate) fn lost(&self, key: &str, reason: &str) {
        let mut map = self.lock();
        let s = map.entry(key.to_string()).or_default();
        let newly = !s.held;
        if newly {
            info!(instance = key, reason, "instance ejected: its peer is lost");
        }
        s.failures = s.failures.saturating_add(1);
        s.held = true;
        s.last_failure = Some(reason.to_string());
        s.last_failure_at = Some(std::time::SystemTime::now());
        drop(map);
        if newly {
            self.count_ejection(key);
        }
    }

    /// Records a failure: ejects the instance for a back-off that doubles with each
    /// consecutive failure, up to the cap.
    pub(crate) fn failed(&self, key: &str, reason: &str) {
        let mut map = self.lock();
        let s = map.entry(key.to_string()).or_default();
        s.failures = s.failures.saturating_add(1);
        let factor = 1u32 << (s.failures - 1).min(16);
        let backoff = self
            .backoff
            .base
            .saturating_mul(factor)
            .min(self.backoff.cap);
        s.ejected_until = Some(Instant::now() + backoff);
        s.last_failure = Some(reason.to_string());
        s.last_failure_at = Some(std::time::SystemTime::now());
        info!(
            instance = key,
            failures = s.failures,
            ?backoff,
            reason,
            "instance ejected"
        );
        drop(map);
        self.count_ejection(key);
    }

    /// Forgets the instances for which `keep` is false (discovery removed them), except those
    /// a connection is still open on (their guard still counts on the entry); returns the
    /// keys forgotten.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut gone = Vec::new();
        self.lock().retain(|key, s| {
            let stays = s.open > 0 || keep(key);
            if !stays {
                gone.push(key.clone());
            }
            stays
        });
        gone
    }

    /// Instances the balancer holds state for.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Health and load of every instance seen.
    pub(crate) fn stats(&self) -> Vec<InstanceStats> {
        let now = Instant::now();
        let map = self.lock();
        let mut out: Vec<InstanceStats> = map
            .iter()
            .map(|(k, s)| InstanceStats {
                instance: k.clone(),
                health: if s.held || s.ejected_until.is_some_and(|t| t > now) {
                    "ejected"
                } else {
                    "healthy"
                },
                open: s.open,
                total: s.total,
                failures: s.failures,
                last_failure: s.last_failure.clone(),
                last_failure_at: s.last_failure_at,
            })
            .collect();
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices<'a>(keys: &'a [&'a str], weights: &[u32]) -> Vec<Choice<'a>> {
        keys.iter()
            .zip(weights)
            .map(|(k, w)| Choice { key: k, weight: *w })
            .collect()
    }

    fn counts(b: &Balancer, c: &[Choice<'_>], n: usize) -> Vec<usize> {
        let mut out = vec![0; c.len()];
        for _ in 0..n {
            out[b.pick(c).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn round_robin_even_and_weighted() {
        let b = Balancer::new(Policy::RoundRobin, Backoff::default());
        let c = choices(&["a", "b", "c"], &[1, 1, 1]);
        assert_eq!(counts(&b, &c, 300), vec![100, 100, 100]);
        let b = Balancer::new(Policy::RoundRobin, Backoff::default());
        let c = choices(&["a", "b"], &[1, 3]);
        assert_eq!(counts(&b, &c, 400), vec![100, 300]);
    }

    #[test]
    fn random_and_least_conn_respect_weights() {
        for policy in [Policy::Random, Policy::LeastConn] {
            let b = Balancer::new(policy, Backoff::default());
            let c = choices(&["a", "b"], &[1, 3]);
            let n = counts(&b, &c, 4000);
            assert!((800..1200).contains(&n[0]), "{policy:?} {n:?}");
        }
    }

    #[test]
    fn least_conn_avoids_the_busy_instance() {
        let b = Balancer::new(Policy::LeastConn, Backoff::default());
        let c = choices(&["a", "b"], &[1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| b.opened("a")).collect();
        let n = counts(&b, &c, 100);
        assert!(n[1] > 60, "{n:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_backs_off_and_success_readmits() {
        let b = Balancer::new(
            Policy::RoundRobin,
            Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(4),
            },
        );
        let c = choices(&["a", "b"], &[1, 1]);
        b.failed("a", "refused");
        assert_eq!(counts(&b, &c, 10), vec![0, 10]);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(counts(&b, &c, 10)[0] > 0, "re-admitted after the back-off");
        b.failed("a", "refused");
        b.failed("a", "refused");
        b.failed("a", "refused");
        b.failed("a", "refused");
        tokio::time::advance(Duration::from_millis(3900)).await;
        assert_eq!(
            counts(&b, &c, 10)[0],
            0,
            "capped at 4 s, still ejected at 3.9 s"
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(counts(&b, &c, 10)[0] > 0);
        // All ejected: the one whose ejection ends first is still tried.
        b.failed("a", "x");
        b.failed("b", "x");
        assert!(b.pick(&c).is_some());
        b.succeeded("a");
        b.lost("b", "peer lost");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            counts(&b, &c, 10),
            vec![10, 0],
            "a lost peer stays ejected until it proves healthy"
        );
        assert_eq!(
            b.stats().iter().find(|s| s.instance == "a").unwrap().health,
            "healthy"
        );
    }
}
