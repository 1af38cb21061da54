//! What a node counts, for the admin endpoint's `/metrics` (Prometheus text format) and for
//! `status`.
//!
//! Events (connections, bytes, refusals, ejections, discovery changes) are counted in
//! prometheus-client families. The data path holds handles resolved once per connection, so
//! a copied chunk costs one relaxed atomic add: no lock, no label lookup, no allocation.
//! Values that live elsewhere (target health, peer RTT and congestion window, certificate
//! expiry) are read at scrape time from the node's status snapshot, so they are never stale
//! and never kept twice.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::control::NodeStatus;

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A service and one of its instances (the instance key that `status` shows).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The service.
    pub service: String,
    /// The instance key.
    pub instance: String,
}

/// A service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service.
    pub service: String,
}

/// A provider-side stream's outcome for a service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// The service asked for (empty when the request could not be read).
    pub service: String,
    /// `accepted`, or the refusal: `draining`, `unknown_service`, `not_allowed`,
    /// `target_down`, `target_refused`, `target_unreachable`, `bad_request`, `auth_failed`.
    pub outcome: &'static str,
}

/// A discovery event from one source.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscoveryLabels {
    /// `mdns` (records), `mesh` (what verified nodes say over their control streams),
    /// `static`, `dns-srv`, `dns-sd`.
    pub source: &'static str,
    /// `added`, `removed` or `updated`.
    pub event: &'static str,
}

/// Counts the discovery events of one source.
#[derive(Debug, Clone)]
pub struct DiscoveryMeter {
    family: Family<DiscoveryLabels, Counter>,
    source: &'static str,
}

impl DiscoveryMeter {
    /// A meter not registered anywhere (tests, `ls`).
    pub fn detached(source: &'static str) -> Self {
        Self {
            family: Family::default(),
            source,
        }
    }

    /// The same family, another source.
    pub fn for_source(&self, source: &'static str) -> Self {
        Self {
            family: self.family.clone(),
            source,
        }
    }

    /// Counts `n` events (`added`, `removed`, `updated`).
    pub fn count(&self, event: &'static str, n: u64) {
        if n > 0 {
            let labels = DiscoveryLabels {
                source: self.source,
                event,
            };
            self.family.get_or_create(&labels).inc_by(n);
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Durations from 0.1 ms to ~30 min (connection lifetimes).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 4.0, 13))
}

/// Stream set-up latencies from 50 µs to ~3 s.
fn setup_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.5, 13))
}

/// The consumer side, per service and instance.
#[derive(Debug, Clone)]
pub struct ConsumerFamilies {
    /// Client connections an instance carried.
    pub opened: Family<InstanceLabels, Counter>,
    /// Attempts that failed on an instance (another instance was tried where one was left).
    pub failed: Family<InstanceLabels, Counter>,
    /// Client connections that no instance could carry (closed without a byte).
    pub dropped: Family<ServiceLabels, Counter>,
    /// Client connections open now.
    pub active: Family<InstanceLabels, Gauge>,
    /// How long carried connections lasted.
    pub duration: HistogramFamily<InstanceLabels>,
    /// Bytes from clients to the instance.
    pub sent: Family<InstanceLabels, Counter>,
    /// Bytes from the instance to clients.
    pub received: Family<InstanceLabels, Counter>,
    /// From accepting a client connection to the provider's `ok` (or the direct backend's
    /// connect).
    pub setup: HistogramFamily<InstanceLabels>,
    /// Further attempts after a failed one.
    pub retries: Family<ServiceLabels, Counter>,
    /// Attempts also sent to a second instance because the first was slow to answer.
    pub hedges: Family<ServiceLabels, Counter>,
    /// Instances taken out of rotation.
    pub ejections: Family<InstanceLabels, Counter>,
    /// Ejected instances taken back.
    pub readmissions: Family<InstanceLabels, Counter>,
}

impl Default for ConsumerFamilies {
    fn default() -> Self {
        Self {
            opened: Family::default(),
            failed: Family::default(),
            dropped: Family::default(),
            active: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            sent: Family::default(),
            received: Family::default(),
            setup: Family::new_with_constructor(setup_histogram),
            retries: Family::default(),
            hedges: Family::default(),
            ejections: Family::default(),
            readmissions: Family::default(),
        }
    }
}

impl ConsumerFamilies {
    /// The handles of one carried connection on `labels`.
    pub fn connection(&self, labels: &InstanceLabels) -> ConnMeters {
        ConnMeters {
            sent: self.sent.get_or_create_owned(labels),
            received: self.received.get_or_create_owned(labels),
            active: self.active.get_or_create_owned(labels),
            duration: self.duration.get_or_create_owned(labels),
        }
    }

    /// Bytes carried to and from an instance so far.
    pub fn bytes(&self, labels: &InstanceLabels) -> (u64, u64) {
        let get = |f: &Family<InstanceLabels, Counter>| f.get(labels).map_or(0, |c| c.get());
        (get(&self.sent), get(&self.received))
    }

    /// Forgets an instance that discovery removed (its series end).
    pub fn forget(&self, labels: &InstanceLabels) {
        self.opened.remove(labels);
        self.failed.remove(labels);
        self.active.remove(labels);
        self.duration.remove(labels);
        self.sent.remove(labels);
        self.received.remove(labels);
        self.setup.remove(labels);
        self.ejections.remove(labels);
        self.readmissions.remove(labels);
    }
}

/// The provider side, per announced service.
#[derive(Debug, Clone, Default)]
pub struct ProviderFamilies {
    /// Streams accepted or refused, by outcome.
    pub streams: Family<StreamLabels, Counter>,
    /// Streams open now.
    pub active: Family<ServiceLabels, Gauge>,
    /// Bytes from the target to consumers.
    pub sent: Family<ServiceLabels, Counter>,
    /// Bytes from consumers to the target.
    pub received: Family<ServiceLabels, Counter>,
}

impl ProviderFamilies {
    /// Counts a stream's outcome.
    pub fn stream(&self, service: &str, outcome: &'static str) {
        let labels = StreamLabels {
            service: service.to_string(),
            outcome,
        };
        self.streams.get_or_create(&labels).inc();
    }

    /// Streams of `service` accepted and refused so far, and open now.
    pub fn totals(&self, service: &str) -> (u64, u64, i64) {
        let labels = ServiceLabels {
            service: service.to_string(),
        };
        let accepted = self
            .streams
            .get(&StreamLabels {
                service: service.to_string(),
                outcome: "accepted",
            })
            .map_or(0, |c| c.get());
        let refused = REFUSAL_OUTCOMES
            .iter()
            .filter_map(|&outcome| {
                let l = StreamLabels {
                    service: service.to_string(),
                    outcome,
                };
                self.streams.get(&l).map(|c| c.get())
            })
            .sum();
        let open = self.active.get(&labels).map_or(0, |g| g.get());
        (accepted, refused, open)
    }

    /// Bytes to and from consumers of `service` so far.
    pub fn bytes(&self, service: &str) -> (u64, u64) {
        let labels = ServiceLabels {
            service: service.to_string(),
        };
        let get = |f: &Family<ServiceLabels, Counter>| f.get(&labels).map_or(0, |c| c.get());
        (get(&self.sent), get(&self.received))
    }
}

/// Every refusal outcome of [`StreamLabels`].
pub const REFUSAL_OUTCOMES: [&str; 8] = [
    "draining",
    "unknown_service",
    "not_allowed",
    "target_down",
    "target_refused",
    "target_unreachable",
    "bad_request",
    "auth_failed",
];

/// The handles one carried connection updates (resolved once, when it starts).
#[derive(Debug, Clone)]
pub struct ConnMeters {
    /// Bytes from the client.
    pub sent: Counter,
    /// Bytes to the client.
    pub received: Counter,
    active: Gauge,
    duration: Histogram,
}

impl ConnMeters {
    /// Counts the connection open until the guard drops, then observes its duration.
    pub fn open(&self) -> OpenConn<'_> {
        self.active.inc();
        OpenConn {
            meters: self,
            since: std::time::Instant::now(),
        }
    }
}

/// An open connection's place in the `active` gauge and the duration histogram.
#[derive(Debug)]
pub struct OpenConn<'a> {
    meters: &'a ConnMeters,
    since: std::time::Instant,
}

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        self.meters.active.dec();
        self.meters
            .duration
            .observe(self.since.elapsed().as_secs_f64());
    }
}

/// Where the scrape-time values come from: the node's status snapshot.
type Snapshot = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

/// Encodes the values read from the status snapshot at each scrape.
#[derive(Default)]
struct Live(OnceLock<Snapshot>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live(..)")
    }
}

/// One gauge (or counter) of a descriptor, for each of its label sets.
fn encode_each<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    kind: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    what: (&str, &str, Option<&Unit>),
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let (name, help, unit) = what;
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(take) = self.0.get() else {
            return Ok(());
        };
        let st = take();
        let secs = Some(&Unit::Seconds);
        let bytes = Some(&Unit::Bytes);
        encode_each(
            &mut enc,
            ("build_info", "The running build (value 1)", None),
            MetricType::Gauge,
            [([("version", st.version.clone())], ConstGauge::new(1i64))],
        )?;
        encode_one(
            &mut enc,
            ("start_time", "When the node started (Unix time)", secs),
            st.started_unix as f64,
        )?;
        encode_one(
            &mut enc,
            ("draining", "1 while the node drains (stops)", None),
            f64::from(u8::from(st.draining)),
        )?;
        encode_one(
            &mut enc,
            (
                "certificate_expiry_timestamp",
                "When this node's certificate expires (Unix time)",
                secs,
            ),
            st.certificate.not_after_unix as f64,
        )?;
        let up = st.announce.iter().map(|a| {
            let l = [("service", a.service.clone())];
            (l, ConstGauge::new(i64::from(a.target_up)))
        });
        encode_each(
            &mut enc,
            (
                "target_up",
                "Whether an announced service's target passes its health check",
                None,
            ),
            MetricType::Gauge,
            up,
        )?;
        let healthy = st.connect.iter().flat_map(|c| {
            c.instances.iter().map(|i| {
                let l = InstanceLabels {
                    service: c.service.clone(),
                    instance: i.instance.clone(),
                };
                (l, ConstGauge::new(i64::from(i.health == "healthy")))
            })
        });
        encode_each(
            &mut enc,
            (
                "instance_healthy",
                "Whether an instance of a reached service is in rotation",
                None,
            ),
            MetricType::Gauge,
            healthy,
        )?;
        let peer = |p: &crate::control::PeerStatus| {
            [
                ("peer", p.node.clone().unwrap_or_default()),
                ("address", p.address.clone()),
                ("direction", p.direction.to_string()),
            ]
        };
        let rtt = st
            .peers
            .iter()
            .map(|p| (peer(p), ConstGauge::new(p.rtt_ms / 1000.0)));
        let help = "Round-trip time of the QUIC connection to a peer";
        encode_each(&mut enc, ("peer_rtt", help, secs), MetricType::Gauge, rtt)?;
        let cwnd = st
            .peers
            .iter()
            .map(|p| (peer(p), ConstGauge::new(p.cwnd_bytes as i64)));
        let help = "Congestion window of the QUIC connection to a peer";
        let what = ("peer_congestion_window", help, bytes);
        encode_each(&mut enc, what, MetricType::Gauge, cwnd)?;
        let sent = st
            .peers
            .iter()
            .map(|p| (peer(p), ConstCounter::new(p.sent_packets)));
        let help = "UDP packets sent on the QUIC connection to a peer";
        encode_each(
            &mut enc,
            ("peer_sent_packets", help, None),
            MetricType::Counter,
            sent,
        )?;
        let lost = st
            .peers
            .iter()
            .map(|p| (peer(p), ConstCounter::new(p.lost_packets)));
        let help = "Packets lost on the QUIC connection to a peer";
        encode_each(
            &mut enc,
            ("peer_lost_packets", help, None),
            MetricType::Counter,
            lost,
        )
    }
}

/// Everything a node counts, and the registry `/metrics` encodes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    live: Arc<Live>,
    /// The consumer side.
    pub consumer: ConsumerFamilies,
    /// The provider side.
    pub provider: ProviderFamilies,
    /// Discovery events.
    pub discovery: Family<DiscoveryLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered under the `ambassador_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ambassador");
        let consumer = ConsumerFamilies::default();
        let provider = ProviderFamilies::default();
        let discovery = Family::<DiscoveryLabels, Counter>::default();
        let live = Arc::new(Live::default());
        let c = &consumer;
        let r = &mut registry;
        r.register(
            "connections_opened",
            "Client connections carried by an instance",
            c.opened.clone(),
        );
        r.register(
            "connections_failed",
            "Attempts that failed on an instance (retried elsewhere where one was left)",
            c.failed.clone(),
        );
        r.register(
            "connections_dropped",
            "Client connections that no instance could carry",
            c.dropped.clone(),
        );
        r.register(
            "connections_active",
            "Client connections open now",
            c.active.clone(),
        );
        r.register_with_unit(
            "connection_duration",
            "How long carried client connections lasted",
            Unit::Seconds,
            c.duration.clone(),
        );
        r.register_with_unit(
            "connection_sent",
            "Bytes from clients to an instance",
            Unit::Bytes,
            c.sent.clone(),
        );
        r.register_with_unit(
            "connection_received",
            "Bytes from an instance to clients",
            Unit::Bytes,
            c.received.clone(),
        );
        r.register_with_unit(
            "stream_setup_duration",
            "From accepting a client connection to the provider's ok",
            Unit::Seconds,
            c.setup.clone(),
        );
        r.register("retries", "Attempts after a failed one", c.retries.clone());
        r.register(
            "hedges",
            "Attempts also sent to a second instance because the first was slow to answer",
            c.hedges.clone(),
        );
        r.register(
            "ejections",
            "Instances taken out of rotation after a failure",
            c.ejections.clone(),
        );
        r.register(
            "readmissions",
            "Ejected instances taken back into rotation",
            c.readmissions.clone(),
        );
        r.register(
            "provider_streams",
            "Streams for announced services, accepted or refused (by outcome)",
            provider.streams.clone(),
        );
        r.register(
            "provider_streams_active",
            "Streams for announced services open now",
            provider.active.clone(),
        );
        r.register_with_unit(
            "provider_sent",
            "Bytes from announced services' targets to consumers",
            Unit::Bytes,
            provider.sent.clone(),
        );
        r.register_with_unit(
            "provider_received",
            "Bytes from consumers to announced services' targets",
            Unit::Bytes,
            provider.received.clone(),
        );
        r.register(
            "discovery_events",
            "Instances added, removed or updated, by source",
            discovery.clone(),
        );
        r.register_collector(Box::new(live.clone()));
        Self {
            registry,
            live,
            consumer,
            provider,
            discovery,
        }
    }

    /// Where the scrape-time values come from (set once, when the node's status is ready).
    pub fn set_snapshot(&self, take: Snapshot) {
        let _ = self.live.0.set(take);
    }

    /// Where the discovery events of `source` are counted.
    pub fn discovery(&self, source: &'static str) -> DiscoveryMeter {
        DiscoveryMeter {
            family: self.discovery.clone(),
            source,
        }
    }

    /// Every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String never fails; an encoder error would be a bug in a metric's
        // name, which tests would show as a missing metric.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}
