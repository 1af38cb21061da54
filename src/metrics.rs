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
use prometheus_client::registry::{Metric, Registry, Unit};

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

/// An HTTP request's application, instance and status class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The application (its service name; empty for a host no application answers to).
    pub app: String,
    /// The instance that answered (empty when the front answered itself).
    pub instance: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: &'static str,
}

/// The HTTP front's families.
#[derive(Debug, Clone)]
pub struct HttpFamilies {
    /// Requests answered.
    pub requests: Family<HttpLabels, Counter>,
    /// From a request's arrival to its response head, per application.
    pub duration: HistogramFamily<ServiceLabels>,
}

impl Default for HttpFamilies {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(setup_histogram),
        }
    }
}

impl HttpFamilies {
    /// Counts one answered request.
    pub fn answered(&self, app: &str, instance: &str, status: u16, took: std::time::Duration) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let labels = HttpLabels {
            app: app.to_string(),
            instance: instance.to_string(),
            class,
        };
        self.requests.get_or_create(&labels).inc();
        let app = ServiceLabels {
            service: app.to_string(),
        };
        self.duration
            .get_or_create(&app)
            .observe(took.as_secs_f64());
    }

    fn register(&self, r: &mut Registry) {
        let help = "HTTP requests answered by the front, by application, instance and status class";
        reg(r, "http_requests", help, None, self.requests.clone());
        let help = "From an HTTP request's arrival to its response head, by application";
        let unit = Some(Unit::Seconds);
        reg(
            r,
            "http_request_duration",
            help,
            unit,
            self.duration.clone(),
        );
    }
}

/// A discovery event from one source.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscoveryLabels {
    /// `mdns` (records), `mesh` (what verified nodes say over their control streams),
    /// `etcd` (the etcd registry's records and `etcd-keys` backends), `static`, `dns-srv`,
    /// `dns-sd`.
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

    /// The source this meter counts for (`mdns`, `etcd`, ...).
    pub fn source(&self) -> &'static str {
        self.source
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

/// The node's own facts: build, start, drain, certificate.
fn encode_node(enc: &mut DescriptorEncoder, st: &NodeStatus) -> Result<(), std::fmt::Error> {
    let secs = Some(&Unit::Seconds);
    let build = [([("version", st.version.clone())], ConstGauge::new(1i64))];
    let what = ("build_info", "The running build (value 1)", None);
    encode_each(enc, what, MetricType::Gauge, build)?;
    let what = ("start_time", "When the node started (Unix time)", secs);
    encode_one(enc, what, st.started_unix as f64)?;
    let what = ("draining", "1 while the node drains (stops)", None);
    encode_one(enc, what, f64::from(u8::from(st.draining)))?;
    let help = "When this node's certificate expires (Unix time)";
    let what = ("certificate_expiry_timestamp", help, secs);
    encode_one(enc, what, st.certificate.not_after_unix as f64)
}

/// Health: of announced targets, and of the instances of reached services.
fn encode_health(enc: &mut DescriptorEncoder, st: &NodeStatus) -> Result<(), std::fmt::Error> {
    let up = st.announce.iter().map(|a| {
        let l = [("service", a.service.clone())];
        (l, ConstGauge::new(i64::from(a.target_up)))
    });
    let help = "Whether an announced service's target passes its health check";
    encode_each(enc, ("target_up", help, None), MetricType::Gauge, up)?;
    let healthy = st.connect.iter().flat_map(|c| {
        c.instances.iter().map(|i| {
            let l = InstanceLabels {
                service: c.service.clone(),
                instance: i.instance.clone(),
            };
            (l, ConstGauge::new(i64::from(i.health == "healthy")))
        })
    });
    let help = "Whether an instance of a reached service is in rotation";
    encode_each(
        enc,
        ("instance_healthy", help, None),
        MetricType::Gauge,
        healthy,
    )
}

/// The QUIC connections to and from peers, from quinn's statistics.
fn encode_peers(enc: &mut DescriptorEncoder, st: &NodeStatus) -> Result<(), std::fmt::Error> {
    let labels = |p: &crate::control::PeerStatus| {
        [
            ("peer", p.node.clone().unwrap_or_default()),
            ("address", p.address.clone()),
            ("direction", p.direction.to_string()),
        ]
    };
    let peers = &st.peers;
    let rtt = peers
        .iter()
        .map(|p| (labels(p), ConstGauge::new(p.rtt_ms / 1000.0)));
    let help = "Round-trip time of the QUIC connection to a peer";
    let what = ("peer_rtt", help, Some(&Unit::Seconds));
    encode_each(enc, what, MetricType::Gauge, rtt)?;
    let cwnd = peers
        .iter()
        .map(|p| (labels(p), ConstGauge::new(p.cwnd_bytes as i64)));
    let help = "Congestion window of the QUIC connection to a peer";
    let what = ("peer_congestion_window", help, Some(&Unit::Bytes));
    encode_each(enc, what, MetricType::Gauge, cwnd)?;
    let sent = peers
        .iter()
        .map(|p| (labels(p), ConstCounter::new(p.sent_packets)));
    let help = "UDP packets sent on the QUIC connection to a peer";
    encode_each(
        enc,
        ("peer_sent_packets", help, None),
        MetricType::Counter,
        sent,
    )?;
    let lost = peers
        .iter()
        .map(|p| (labels(p), ConstCounter::new(p.lost_packets)));
    let help = "Packets lost on the QUIC connection to a peer";
    encode_each(
        enc,
        ("peer_lost_packets", help, None),
        MetricType::Counter,
        lost,
    )
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(take) = self.0.get() else {
            return Ok(());
        };
        let st = take();
        encode_node(&mut enc, &st)?;
        encode_health(&mut enc, &st)?;
        encode_peers(&mut enc, &st)
    }
}

/// Registers `metric` as `name` (with its unit's suffix, when it has one).
fn reg(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, metric: impl Metric) {
    match unit {
        Some(unit) => r.register_with_unit(name, help, unit, metric),
        None => r.register(name, help, metric),
    }
}

impl ConsumerFamilies {
    /// Registers the consumer side's families in `r`.
    fn register(&self, r: &mut Registry) {
        let (secs, bytes) = (Some(Unit::Seconds), Some(Unit::Bytes));
        let help = "Client connections carried by an instance";
        reg(r, "connections_opened", help, None, self.opened.clone());
        let help = "Attempts that failed on an instance (retried elsewhere where one was left)";
        reg(r, "connections_failed", help, None, self.failed.clone());
        let help = "Client connections that no instance could carry";
        reg(r, "connections_dropped", help, None, self.dropped.clone());
        let help = "Client connections open now";
        reg(r, "connections_active", help, None, self.active.clone());
        let help = "How long carried client connections lasted";
        reg(
            r,
            "connection_duration",
            help,
            secs.clone(),
            self.duration.clone(),
        );
        let help = "Bytes from clients to an instance";
        reg(r, "connection_sent", help, bytes.clone(), self.sent.clone());
        let help = "Bytes from an instance to clients";
        reg(r, "connection_received", help, bytes, self.received.clone());
        let help = "From accepting a client connection to the provider's ok";
        reg(r, "stream_setup_duration", help, secs, self.setup.clone());
        let help = "Attempts after a failed one";
        reg(r, "retries", help, None, self.retries.clone());
        let help = "Attempts also sent to a second instance because the first was slow to answer";
        reg(r, "hedges", help, None, self.hedges.clone());
        let help = "Instances taken out of rotation after a failure";
        reg(r, "ejections", help, None, self.ejections.clone());
        let help = "Ejected instances taken back into rotation";
        reg(r, "readmissions", help, None, self.readmissions.clone());
    }
}

impl ProviderFamilies {
    /// Registers the provider side's families in `r`.
    fn register(&self, r: &mut Registry) {
        let help = "Streams for announced services, accepted or refused (by outcome)";
        reg(r, "provider_streams", help, None, self.streams.clone());
        let help = "Streams for announced services open now";
        reg(
            r,
            "provider_streams_active",
            help,
            None,
            self.active.clone(),
        );
        let help = "Bytes from announced services' targets to consumers";
        reg(
            r,
            "provider_sent",
            help,
            Some(Unit::Bytes),
            self.sent.clone(),
        );
        let help = "Bytes from consumers to announced services' targets";
        reg(
            r,
            "provider_received",
            help,
            Some(Unit::Bytes),
            self.received.clone(),
        );
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
    /// The HTTP front.
    pub http: HttpFamilies,
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
        let http = HttpFamilies::default();
        consumer.register(&mut registry);
        provider.register(&mut registry);
        http.register(&mut registry);
        let help = "Instances added, removed or updated, by source";
        reg(
            &mut registry,
            "discovery_events",
            help,
            None,
            discovery.clone(),
        );
        registry.register_collector(Box::new(live.clone()));
        Self {
            registry,
            live,
            consumer,
            provider,
            discovery,
            http,
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
