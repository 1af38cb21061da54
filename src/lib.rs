//! ambassador: a master-less service mesh for ad-hoc LANs. An application connects to
//! `localhost:PORT`; the local ambassador finds the service through mDNS/DNS-SD and carries
//! the bytes over one mutually authenticated QUIC connection to the ambassador next to it.
//!
//! # Layout
//! Data flows one way: discovery → registry / endpoint sets → balancer → transport → proxy.
//! - [`cli`], [`config`]: the command line and the TOML file, checked in one place (start-up
//!   and SIGHUP alike) into a [`config::CheckedConfig`], writing nothing, before any socket is
//!   bound; its `prepare` makes the [`config::NodeConfig`] a node runs with (creating the
//!   default mesh key if needed). [`spec`]: the SPEC grammar; [`addr`]: the one parser of
//!   address options (a bare IP takes the option's default port); [`weight`]: the weight's bounds.
//! - [`commands`]: the `mesh`, `ca`, `completions` and `man` commands.
//! - [`names`]: newtypes that must not be mixed up (service and node names, certificate
//!   fingerprints, mesh ids, QUIC versus TCP addresses).
//! - [`identity`]: the mesh key, the trust root derived from it, CA mode, node certificates,
//!   the deny list, rustls configurations. `secret_file`: reading and writing secret files.
//! - [`discovery`]: DNS-SD records, the mDNS announcer/browser and its one-shot unicast
//!   querier, DNS SRV, the etcd registry (key layout, watches, dynamic-ambassador's keys), the
//!   live instance registry (records are hints; what a verified node says
//!   outranks them) and endpoint sets.
//! - [`transport`]: the QUIC endpoint, the peer connection pool, the stream protocol, the
//!   control stream and the peer views it feeds, and [`transport::PeerFailure`], the one
//!   classification of why a peer failed. [`served`]: what a node serves, as that stream
//!   carries it.
//! - `balance`: policies and passive health (ejection, back-off).
//! - `proxy`: the consumer (listener, attempt, probe, direct backends), the provider's
//!   stream handler, the TCP⇄QUIC splice; `inject`: credentials injection (Redis AUTH).
//! - [`node`]: the [`node::Node`] that composes the above: start, provide, consume, status,
//!   reload, drain, stop.
//! - [`control`]: the status socket and its wire types; [`ls`]: browse the mesh;
//!   [`error`]: exit-code mapping; `human`: byte counts, durations and dates for people.

#![warn(unreachable_pub)]

pub mod addr;
pub(crate) mod admin;
pub(crate) mod balance;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod discovery;
pub mod docker;
pub mod error;
pub(crate) mod http;
pub(crate) mod human;
pub mod identity;
pub(crate) mod inject;
pub mod logging;
pub mod ls;
pub mod metrics;
pub mod names;
pub mod node;
pub(crate) mod proxy;
pub(crate) mod secret_file;
pub mod served;
pub mod spec;
pub mod transport;
pub mod weight;
