//! ambassador: a master-less service mesh for ad-hoc LANs. An application connects to
//! `localhost:PORT`; the local ambassador finds the service through mDNS/DNS-SD and carries
//! the bytes over one mutually authenticated QUIC connection to the ambassador next to it.
//!
//! # Layout
//! - [`cli`], [`config`]: the command line and the TOML file, checked into one
//!   [`config::CheckedConfig`] (writing nothing) before any socket is bound; its `prepare`
//!   makes the [`config::NodeConfig`] a node runs with.
//! - [`commands`]: the `mesh` and `ca` commands.
//! - [`identity`]: the mesh key, the trust root derived from it, node certificates, rustls.
//! - [`discovery`]: DNS-SD records, the mDNS announcer/browser, the live instance registry.
//! - [`transport`]: the QUIC endpoint, the peer connection pool, the stream protocol.
//! - [`proxy`]: consumer listeners, the provider's stream handler, the TCP⇄QUIC splice.
//! - [`node`]: composes the above into a running node; [`ls`]: browse the mesh.
//! - [`names`], [`spec`], [`weight`], [`error`]: newtypes, the SPEC grammar, the weight's
//!   bounds, exit-code mapping.

pub mod balance;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod discovery;
pub mod error;
pub mod identity;
pub mod inject;
pub mod ls;
pub mod names;
pub mod node;
pub mod proxy;
pub mod spec;
pub mod transport;
pub mod weight;
