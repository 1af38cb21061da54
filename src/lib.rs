//! ambassador: a master-less service mesh for ad-hoc LANs. An application connects to
//! `localhost:PORT`; the local ambassador finds the service through mDNS/DNS-SD and carries
//! the bytes over one mutually authenticated QUIC connection to the ambassador next to it.
//!
//! # Layout
//! - [`cli`], [`config`]: the command line and the TOML file, validated into one
//!   [`config::NodeConfig`] before any socket is bound.
//! - [`identity`]: the mesh key, the trust root derived from it, node certificates, rustls.
//! - [`discovery`]: DNS-SD records, the mDNS announcer/browser, the live instance registry.
//! - [`transport`]: the QUIC endpoint, the peer connection pool, the stream protocol.
//! - [`proxy`]: consumer listeners, the provider's stream handler, the TCP⇄QUIC splice.
//! - [`node`]: composes the above into a running node; [`ls`]: browse the mesh.
//! - [`names`], [`spec`], [`error`]: newtypes, the SPEC grammar, exit-code mapping.

pub mod balance;
pub mod cli;
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
