//! Apiary: a masterless, clustered MQTT broker configured by HiveMQ's `config.xml`.
//!
//! # Layout
//! - [`mqtt`]: the MQTT 3.1 / 3.1.1 / 5.0 codec: packets, properties, reason codes, topics.
//! - [`config`]: HiveMQ's `config.xml` (with `${ENV:X}` placeholders), validated with line numbers.
//! - [`broker`]: sessions, the subscription tree, retained messages, wills, QoS flows, shared
//!   subscriptions — plain state behind one lock, no I/O.
//! - [`cluster`]: membership, failure detection, routing between nodes.
//! - [`store`]: redb persistence of everything that must survive a restart, with group commit.
//! - [`listener`]: TCP, TLS and WebSocket listeners; one task per connection speaks MQTT and
//!   drives the broker.
//! - [`extension`]: WebAssembly extensions (cluster discovery), sandboxed with wasmtime.
//! - [`server`]: starts and stops a node.
//! - [`bench`]: the `apiary-bench` load generator (Apiary vs mosquitto, side by side).
#![forbid(unsafe_code)]
#![deny(unused_must_use)]

pub mod bench;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod extension;
pub mod listener;
pub mod mqtt;
pub mod server;
pub mod store;
