//! Congestion control of the QUIC connections: quinn's CUBIC, either as it is (every loss is
//! congestion) or deaf to random loss, as a BBR host's TCP is.
//!
//! A host whose TCP runs BBR (`net.ipv4.tcp_congestion_control = bbr`) has chosen a sender that
//! keeps its rate through random loss (a lossy Wi-Fi hop, a flaky switch port): TCP over it
//! carries 1 % loss at full speed, where CUBIC cuts its window by 30 % at every lost packet.
//! `LossTolerant` keeps CUBIC's window growth and its response to real congestion, but only
//! answers a loss when more than 2 % (BBRv2's threshold) of the last ~1,000 packets' bytes are
//! lost, or on an ECN mark or persistent congestion. A queue that overflows loses a burst and
//! is answered as CUBIC answers it; a link that drops one packet in a hundred is not. quinn's
//! own BBR is marked experimental and lost a quarter of the lossless download in our LAN runs
//! (benches/results-lan.md, Notes).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// Which congestion controller the QUIC connections run (`--congestion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Congestion {
    /// The host's choice: loss-tolerant where its TCP runs BBR, cubic otherwise
    #[default]
    Auto,
    /// CUBIC (RFC 9438): every loss is congestion
    Cubic,
    /// CUBIC that answers loss only above 2 % of the last ~1,000 packets (or ECN, a blackout)
    LossTolerant,
}

impl Congestion {
    /// `Auto` made concrete from this network namespace's TCP setting; others unchanged.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto => Self::for_tcp(
                std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
                    .ok()
                    .as_deref(),
            ),
            concrete => concrete,
        }
    }

    /// What follows a host whose TCP congestion control is `tcp` (unknown: CUBIC).
    fn for_tcp(tcp: Option<&str>) -> Self {
        match tcp {
            Some(name) if name.trim().starts_with("bbr") => Self::LossTolerant,
            _ => Self::Cubic,
        }
    }

    /// The factory quinn builds each connection's controller with.
    pub(super) fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        let cubic = Arc::new(CubicConfig::default());
        match self.resolve() {
            Self::LossTolerant => Arc::new(LossTolerantFactory(cubic)),
            _ => cubic,
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match clap::ValueEnum::to_possible_value(self) {
            Some(value) => f.write_str(value.get_name()),
            None => Ok(()),
        }
    }
}

/// Losses above this share of the recent packets are congestion: 1 in 50 (BBRv2's 2 %).
const LOSS_THRESHOLD_INVERSE: f64 = 50.0;

/// How far back "recent" reaches: the last ~1,000 full-size packets, so that one loss in a
/// small window (1 of 40 is 2.5 %) is not mistaken for a trend.
const HORIZON_BYTES: f64 = 1_500_000.0;

struct LossTolerantFactory(Arc<CubicConfig>);

impl ControllerFactory for LossTolerantFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossTolerant::new(self.0.clone().build(now, current_mtu)))
    }
}

/// Bytes delivered and lost lately, each weighed down as newer bytes come (an exponential
/// moving sum over `HORIZON_BYTES`), and the rule that tells congestion from noise.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct LossTally {
    delivered: f64,
    lost: f64,
}

impl LossTally {
    /// Fades the tally by `bytes` newer ones.
    fn age(&mut self, bytes: u64) {
        // A batch is at most a few GSO sends (< 1 MB), well inside the horizon: keep > 0.
        let keep = (1.0 - bytes as f64 / HORIZON_BYTES).max(0.0);
        self.delivered *= keep;
        self.lost *= keep;
    }

    fn acked(&mut self, bytes: u64) {
        self.age(bytes);
        self.delivered += bytes as f64;
    }

    /// Counts `lost_bytes`; whether the loss is congestion. An ECN mark (no bytes lost) and
    /// persistent congestion (a blackout) are, whatever the tally says; so is the first loss,
    /// before anything is delivered (slow start ends there, as in CUBIC).
    fn is_congestion(&mut self, lost_bytes: u64, persistent: bool) -> bool {
        self.age(lost_bytes);
        self.lost += lost_bytes as f64;
        lost_bytes == 0
            || persistent
            || self.lost * LOSS_THRESHOLD_INVERSE > self.lost + self.delivered
    }
}

/// CUBIC that lets random loss pass: see the module's documentation.
struct LossTolerant {
    cubic: Box<dyn Controller>,
    tally: LossTally,
}

impl LossTolerant {
    fn new(cubic: Box<dyn Controller>) -> Self {
        Self {
            cubic,
            tally: LossTally::default(),
        }
    }
}

impl Controller for LossTolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.tally.acked(bytes);
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if self
            .tally
            .is_congestion(lost_bytes, is_persistent_congestion)
        {
            self.cubic
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.cubic.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            cubic: self.cubic.clone_box(),
            tally: self.tally,
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: u64 = 1452;

    /// A tally after `packets` packets delivered, with one lost in every `one_in`.
    fn tally(packets: u64, one_in: u64) -> LossTally {
        let mut tally = LossTally::default();
        for n in 1..=packets {
            if n % one_in == 0 {
                assert!(!tally.is_congestion(PACKET, false) || n == one_in);
            } else {
                tally.acked(PACKET);
            }
        }
        tally
    }

    #[test]
    fn the_host_setting_picks_the_controller() {
        assert_eq!(Congestion::for_tcp(Some("bbr\n")), Congestion::LossTolerant);
        assert_eq!(Congestion::for_tcp(Some("cubic\n")), Congestion::Cubic);
        assert_eq!(Congestion::for_tcp(None), Congestion::Cubic);
        assert_eq!(Congestion::Cubic.resolve(), Congestion::Cubic);
        assert_ne!(Congestion::Auto.resolve(), Congestion::Auto);
        assert_eq!(Congestion::LossTolerant.to_string(), "loss-tolerant");
    }

    #[test]
    fn one_loss_in_a_hundred_is_noise() {
        let mut t = tally(100_000, 100);
        assert!(!t.is_congestion(PACKET, false), "1 %, steady");
        // Nor do three in a row.
        assert!(!t.is_congestion(2 * PACKET, false));
    }

    #[test]
    fn sustained_loss_above_two_percent_is_congestion() {
        let mut t = tally(100_000, 100);
        let congested = (0..500).any(|n| {
            if n % 25 == 0 {
                t.is_congestion(PACKET, false)
            } else {
                t.acked(PACKET);
                false
            }
        });
        assert!(congested, "4 % loss is answered within 500 packets");
        // A burst: a queue that overflows loses many packets at once.
        let mut t = tally(100_000, 100);
        assert!(t.is_congestion(30 * PACKET, false));
        // At the start nothing is delivered yet: the first loss is congestion, as in CUBIC.
        assert!(LossTally::default().is_congestion(PACKET, false));
    }

    #[test]
    fn ecn_marks_and_blackouts_are_always_congestion() {
        let mut t = tally(100_000, 100);
        assert!(t.is_congestion(0, false), "an ECN mark");
        assert!(t.is_congestion(PACKET, true), "persistent congestion");
    }

    #[test]
    fn the_controller_cuts_cubic_only_on_congestion() {
        let cubic = Arc::new(CubicConfig::default());
        let now = Instant::now();
        let mut c = LossTolerant::new(cubic.build(now, 1452));
        c.tally = tally(100_000, 100);
        let window = c.window();
        c.on_congestion_event(now, now, false, PACKET);
        assert_eq!(c.window(), window, "noise leaves the window");
        c.on_congestion_event(now, now, false, 100 * PACKET);
        assert!(c.window() < window, "congestion cuts it");
    }
}
