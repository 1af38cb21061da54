//! One-shot (RFC 6762 §6.7 "legacy unicast") DNS-SD queries for the mesh's records, so a
//! browser that starts right after a record was multicast knows it at once.
//!
//! A responder multicasts a record at most once a second, so a browser started within a
//! second of an announcement (or of another browser's query) waits up to ~1 s for its answer.
//! A query sent from a port other than 5353 is a legacy querier's: mdns-sd answers it at once,
//! by unicast to the querier's address and port, with the SRV, TXT and address records as
//! additionals and without the multicast rate limit or the shared-answer delay. The answers
//! are hints like any record: the QUIC handshake proves them.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use hickory_proto::ProtoError;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Instance, RecordError, SERVICE_TYPE, TxtRecord};

/// The mDNS IPv4 group and port.
pub const MDNS_V4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353);

/// When the queries go out, counted from the querier's start: early and repeated, to reach a
/// responder that is just starting and to make up for a lost packet.
pub const SCHEDULE: [Duration; 6] = [
    Duration::from_millis(0),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// How long answers are still taken after the last query.
pub const LINGER: Duration = Duration::from_millis(300);

/// Largest answer read (an mDNS message over IPv4 fits in 9000 bytes, RFC 6762 §17).
const MAX_ANSWER: usize = 9000;

/// Why a query could not be made or an answer not read.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The interfaces could not be listed.
    #[error("listing interfaces: {0}")]
    Interfaces(#[source] std::io::Error),
    /// No IPv4 interface to query on.
    #[error("no IPv4 interface to query on")]
    NoInterface,
    /// The query socket could not be made or used.
    #[error("query socket: {0}")]
    Socket(#[source] std::io::Error),
    /// A DNS message could not be built or parsed.
    #[error("DNS message: {0}")]
    Dns(#[from] ProtoError),
    /// A message that is not an answer to our query (wrong id, not a response).
    #[error("not an answer to our query")]
    NotOurs,
}

/// One instance named by an answer, with its records parsed (strictly, as browsed ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The instance's DNS-SD full name, as the PTR record names it.
    pub fullname: String,
    /// The instance, or why its records were not taken.
    pub instance: Result<Instance, RecordError>,
}

/// The IPv4 addresses of the interfaces to query on: those named in `names`, or with `names`
/// empty every IPv4 interface that is up (loopback included, as mdns-sd does).
pub fn interface_addrs(names: &[String]) -> Result<Vec<Ipv4Addr>, QueryError> {
    let mut out: Vec<Ipv4Addr> = if_addrs::get_if_addrs()
        .map_err(QueryError::Interfaces)?
        .into_iter()
        .filter(|i| i.is_oper_up() && !i.is_p2p())
        .filter(|i| names.is_empty() || names.contains(&i.name))
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(QueryError::NoInterface);
    }
    Ok(out)
}

/// The DNS name of `text` (dot-separated labels, taken as raw bytes: DNS-SD instance names
/// may hold any character).
fn dns_name(text: &str) -> Result<Name, ProtoError> {
    Name::from_labels(text.split('.').filter(|l| !l.is_empty()).map(str::as_bytes))
}

/// `name` as mdns-sd spells a full name: its labels joined by dots, with the final dot; `None`
/// when a label is not UTF-8 (mdns-sd drops such a name too).
fn name_text(name: &Name) -> Option<String> {
    let mut out = String::new();
    for label in name.iter() {
        out.push_str(std::str::from_utf8(label).ok()?);
        out.push('.');
    }
    Some(out)
}

/// A legacy query with `id` for the PTR records of the mesh's service type.
pub fn query_message(id: u16) -> Result<Vec<u8>, QueryError> {
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(false)
        .add_query(Query::query(dns_name(SERVICE_TYPE)?, RecordType::PTR));
    Ok(msg.to_vec()?)
}

/// The records of the answers read so far, by lower-cased owner name. An instance's records
/// may come in several messages (a large answer is split), so they are gathered first.
#[derive(Debug, Default)]
pub struct Answers {
    /// Instance full names named by PTR records of the service type.
    instances: BTreeSet<String>,
    /// SRV records: QUIC port and target host, by instance.
    srv: HashMap<String, (u16, String)>,
    /// TXT records: their strings, by instance.
    txt: HashMap<String, Vec<Box<[u8]>>>,
    /// A and AAAA records, by host.
    addrs: HashMap<String, Vec<IpAddr>>,
}

impl Answers {
    /// Takes the records of one answer to the query with `id`.
    pub fn add(&mut self, bytes: &[u8], id: u16) -> Result<(), QueryError> {
        let msg = Message::from_vec(bytes)?;
        if msg.message_type() != MessageType::Response || msg.id() != id {
            return Err(QueryError::NotOurs);
        }
        let service_type = SERVICE_TYPE.to_ascii_lowercase();
        for record in msg.answers().iter().chain(msg.additionals()) {
            let Some(owner) = name_text(record.name()) else {
                continue;
            };
            let owner = owner.to_ascii_lowercase();
            match record.data() {
                RData::PTR(ptr) if owner == service_type => {
                    if let Some(target) = name_text(&ptr.0) {
                        self.instances.insert(target);
                    }
                }
                RData::SRV(srv) => {
                    if let Some(target) = name_text(srv.target()) {
                        self.srv
                            .insert(owner, (srv.port(), target.to_ascii_lowercase()));
                    }
                }
                RData::TXT(txt) => {
                    self.txt.insert(owner, txt.txt_data().to_vec());
                }
                RData::A(a) => self.add_addr(owner, IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => self.add_addr(owner, IpAddr::V6(aaaa.0)),
                _ => {}
            }
        }
        Ok(())
    }

    fn add_addr(&mut self, host: String, ip: IpAddr) {
        let list = self.addrs.entry(host).or_default();
        if !list.contains(&ip) {
            list.push(ip);
        }
    }

    /// Every instance whose SRV and TXT records have come, parsed.
    pub fn resolved(&self) -> Vec<Resolved> {
        self.instances
            .iter()
            .filter_map(|fullname| {
                let key = fullname.to_ascii_lowercase();
                let (port, host) = self.srv.get(&key)?;
                let strings = self.txt.get(&key)?;
                let addrs = self.addrs.get(host).cloned().unwrap_or_default();
                let instance = TxtRecord::parse(|k| txt_value(strings, k))
                    .and_then(|txt| Instance::new(fullname, *port, addrs, txt));
                Some(Resolved {
                    fullname: fullname.clone(),
                    instance,
                })
            })
            .collect()
    }
}

/// The value of TXT key `key` (`key=value`, keys compared without case; the first one counts,
/// as in mdns-sd); a key without `=` has the empty value, a value not UTF-8 counts as absent.
fn txt_value(strings: &[Box<[u8]>], key: &str) -> Option<String> {
    let mut seen: Vec<&[u8]> = Vec::new();
    for s in strings {
        let (k, v) = match s.iter().position(|b| *b == b'=') {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (&s[..], &[][..]),
        };
        if seen.iter().any(|p| p.eq_ignore_ascii_case(k)) {
            continue;
        }
        seen.push(k);
        if k.eq_ignore_ascii_case(key.as_bytes()) {
            return std::str::from_utf8(v).ok().map(str::to_string);
        }
    }
    None
}

/// A random query id (answers must echo it).
fn random_id() -> u16 {
    // Truncation intended: any 16 bits of a randomly keyed hash will do.
    RandomState::new().build_hasher().finish() as u16
}

/// A one-shot querier: an ephemeral IPv4 UDP socket that sends the mesh's PTR query to the
/// mDNS group on each interface and reads the unicast answers.
pub struct Querier {
    /// The ephemeral socket (its port is not 5353, which makes the query a legacy one).
    socket: UdpSocket,
    /// The interface addresses to send the query on.
    interfaces: Vec<Ipv4Addr>,
    /// The query's id.
    id: u16,
    /// The query message.
    query: Vec<u8>,
}

impl Querier {
    /// A querier on the interfaces with these IPv4 addresses.
    pub fn bind(interfaces: Vec<Ipv4Addr>) -> Result<Self, QueryError> {
        let std_socket =
            std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(QueryError::Socket)?;
        std_socket
            .set_nonblocking(true)
            .map_err(QueryError::Socket)?;
        // RFC 6762 §11: mDNS packets go out with IP TTL 255.
        std_socket
            .set_multicast_ttl_v4(255)
            .map_err(QueryError::Socket)?;
        let socket = UdpSocket::from_std(std_socket).map_err(QueryError::Socket)?;
        let id = random_id();
        Ok(Self {
            socket,
            interfaces,
            id,
            query: query_message(id)?,
        })
    }

    /// Sends the query once on every interface; a failure on one is logged and skipped.
    async fn send(&self) {
        for ip in &self.interfaces {
            let sent = match socket2::SockRef::from(&self.socket).set_multicast_if_v4(ip) {
                Ok(()) => self.socket.send_to(&self.query, MDNS_V4).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                debug!(interface = %ip, error = %e, "cannot send a one-shot mDNS query");
            }
        }
    }

    /// Sends the query on [`SCHEDULE`] and hands every instance its answers name to `on`
    /// (again each time more records come), until [`LINGER`] after the last query or `cancel`.
    pub async fn run(self, mut on: impl FnMut(Resolved), cancel: CancellationToken) {
        let start = Instant::now();
        let end = start + SCHEDULE[SCHEDULE.len() - 1] + LINGER;
        let mut sent = 0;
        let mut answers = Answers::default();
        let mut buf = vec![0u8; MAX_ANSWER];
        loop {
            let wake = SCHEDULE.get(sent).map_or(end, |d| start + *d);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(wake) => {
                    if sent == SCHEDULE.len() {
                        return;
                    }
                    sent += 1;
                    self.send().await;
                }
                got = self.socket.recv_from(&mut buf) => match got {
                    Ok((len, from)) => {
                        if let Err(e) = self.take(&mut answers, &buf[..len], from) {
                            debug!(%from, error = %e, "ignoring a datagram on the query socket");
                            continue;
                        }
                        answers.resolved().into_iter().for_each(&mut on);
                    }
                    Err(e) => debug!(error = %e, "reading the query socket"),
                },
            }
        }
    }

    /// Takes one datagram from `from` into `answers`, if it is an answer to our query.
    fn take(
        &self,
        answers: &mut Answers,
        bytes: &[u8],
        from: SocketAddr,
    ) -> Result<(), QueryError> {
        if from.port() != MDNS_V4.port() {
            return Err(QueryError::NotOurs);
        }
        answers.add(bytes, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV, TXT};

    const FULLNAME: &str = "redis@node-b_01234567._ambassador._udp.local.";
    const HOST: &str = "node-b-01234567.local.";

    fn txt() -> TxtRecord {
        crate::discovery::record::sample_txt(2)
    }

    /// A legacy unicast answer as mdns-sd sends it: the question echoed, the PTR as the
    /// answer, SRV, TXT and the addresses as additionals, no cache-flush bits, TTLs capped.
    fn answer(id: u16, props: &[(String, String)], addrs: &[IpAddr]) -> Vec<u8> {
        let name = |s: &str| dns_name(s).unwrap();
        let mut msg = Message::new();
        msg.set_id(id)
            .set_message_type(MessageType::Response)
            .set_authoritative(true)
            .add_query(Query::query(name(SERVICE_TYPE), RecordType::PTR))
            .add_answer(Record::from_rdata(
                name(SERVICE_TYPE),
                10,
                RData::PTR(PTR(name(FULLNAME))),
            ))
            .add_additional(Record::from_rdata(
                name(FULLNAME),
                10,
                RData::SRV(SRV::new(0, 0, 4433, name(HOST))),
            ))
            .add_additional(Record::from_rdata(
                name(FULLNAME),
                10,
                RData::TXT(TXT::new(
                    props.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                )),
            ));
        for ip in addrs {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            msg.add_additional(Record::from_rdata(name(HOST), 10, data));
        }
        msg.to_vec().unwrap()
    }

    fn props() -> Vec<(String, String)> {
        let mut p: Vec<_> = txt().to_properties().into_iter().collect();
        p.sort();
        p
    }

    #[test]
    fn query_asks_for_the_service_type_ptr() {
        let msg = Message::from_vec(&query_message(7).unwrap()).unwrap();
        assert_eq!(msg.id(), 7);
        assert_eq!(msg.message_type(), MessageType::Query);
        let q = &msg.queries()[0];
        assert_eq!(q.query_type(), RecordType::PTR);
        assert_eq!(name_text(q.name()).unwrap(), SERVICE_TYPE);
    }

    #[test]
    fn answer_parses_into_an_instance() {
        let ips: Vec<IpAddr> = vec!["10.77.0.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
        let mut answers = Answers::default();
        answers.add(&answer(7, &props(), &ips), 7).unwrap();
        let got = answers.resolved();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].fullname, FULLNAME);
        let want = Instance::new(FULLNAME, 4433, ips, txt()).unwrap();
        assert_eq!(got[0].instance, Ok(want));
    }

    #[test]
    fn records_split_over_messages_are_joined() {
        let ip: IpAddr = "10.77.0.2".parse().unwrap();
        let mut answers = Answers::default();
        // The first message has no address yet: the instance is known but not usable.
        answers.add(&answer(7, &props(), &[]), 7).unwrap();
        assert_eq!(answers.resolved()[0].instance, Err(RecordError::NoAddress));
        answers.add(&answer(7, &props(), &[ip]), 7).unwrap();
        assert_eq!(answers.resolved()[0].instance.as_ref().unwrap().addrs, [ip]);
    }

    #[test]
    fn strict_txt_and_foreign_messages() {
        let ip: IpAddr = "10.77.0.2".parse().unwrap();
        let mut bad = props();
        bad.retain(|(k, _)| k != "id");
        let mut answers = Answers::default();
        answers.add(&answer(7, &bad, &[ip]), 7).unwrap();
        assert_eq!(
            answers.resolved()[0].instance,
            Err(RecordError::Missing("id"))
        );
        // Another query's answer, a query, and garbage are not taken.
        let mut answers = Answers::default();
        assert!(matches!(
            answers.add(&answer(8, &props(), &[ip]), 7),
            Err(QueryError::NotOurs)
        ));
        assert!(matches!(
            answers.add(&query_message(7).unwrap(), 7),
            Err(QueryError::NotOurs)
        ));
        assert!(matches!(
            answers.add(b"\x00\x07", 7),
            Err(QueryError::Dns(_))
        ));
        assert!(answers.resolved().is_empty());
    }

    #[test]
    fn txt_first_key_counts() {
        let strings: Vec<Box<[u8]>> = ["W=3", "w=4", "flag", "bad=\u{0}"]
            .iter()
            .map(|s| s.as_bytes().into())
            .collect();
        assert_eq!(txt_value(&strings, "w").as_deref(), Some("3"));
        assert_eq!(txt_value(&strings, "flag").as_deref(), Some(""));
        assert_eq!(txt_value(&strings, "none"), None);
    }
}
