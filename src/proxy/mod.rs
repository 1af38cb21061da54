//! The proxy: the consumer's listeners, the provider's stream handler, and the splice between
//! a TCP connection and a QUIC stream.

pub mod consumer;
pub mod provider;
pub mod splice;
