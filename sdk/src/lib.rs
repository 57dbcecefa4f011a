//! Write an Apiary cluster discovery extension in Rust.
//!
//! Implement [`Discovery`] and export it with [`export_discovery!`]:
//!
//! ```ignore
//! use apiary_extension_sdk::{Discovery, DiscoveryInput, DiscoveryOutput, NodeAddress, config, log};
//!
//! #[derive(Default)]
//! struct Fixed;
//!
//! impl Discovery for Fixed {
//!     fn init(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
//!         log::info(&format!("node {} starting", input.own_cluster_id));
//!         self.reload(input)
//!     }
//!     fn reload(&mut self, _input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
//!         let host = config::get("host").ok_or("no host in conf/config.properties")?;
//!         Ok(DiscoveryOutput::nodes(vec![NodeAddress { host, port: 7800 }]))
//!     }
//! }
//!
//! apiary_extension_sdk::export_discovery!(Fixed);
//! ```
//!
//! Build it as a component (no other tool needed; Rust's wasip2 target links components):
//!
//! ```sh
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2   # crate-type = ["cdylib"]
//! ```
//!
//! and drop `target/wasm32-wasip2/release/<crate>.wasm` into `extensions/<id>/` next to a
//! `hivemq-extension.xml` whose `<id>` is the folder name.
//!
//! The broker keeps one instance from `init` to `destroy`, so `self` keeps state between calls.
//! A panic traps the instance: the broker keeps the previous node list and starts a fresh
//! instance (a new `Default` value, then `init`). The sandbox grants no files, network or
//! environment: configuration comes from [`config`], output goes through [`log`]. Network access
//! goes through [`http`] and [`dns`], to the hosts and names the operator lists in the
//! extension's `conf/sandbox.properties`:
//!
//! ```properties
//! # hosts (host or host:port; *.suffix; *) this extension may send HTTP(S) requests to
//! http.allow=s3.eu-central-1.amazonaws.com:443, 10.0.0.5:9000
//! # names (exact, *.suffix, or *) this extension may look up
//! dns.allow=tasks.hivemq
//! # optional: the DNS server to ask (ip or ip:port), instead of the system's resolv.conf
//! dns.server=10.0.0.2:53
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "discovery",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_discovery_world",
        default_bindings_module: "apiary_extension_sdk::bindings",
    });
}

pub use bindings::apiary::extension::types::{DiscoveryInput, DiscoveryOutput, NodeAddress};

impl DiscoveryOutput {
    /// The complete node list, keeping the reload interval.
    pub fn nodes(nodes: Vec<NodeAddress>) -> DiscoveryOutput {
        DiscoveryOutput {
            nodes: Some(nodes),
            reload_interval_secs: None,
        }
    }

    /// "No change": the broker keeps its previous list.
    pub fn unchanged() -> DiscoveryOutput {
        DiscoveryOutput {
            nodes: None,
            reload_interval_secs: None,
        }
    }

    /// Also asks for a new reload interval (at least 1 s).
    pub fn with_reload_interval(mut self, secs: u32) -> DiscoveryOutput {
        self.reload_interval_secs = Some(secs);
        self
    }
}

/// A cluster discovery extension (HiveMQ's `ClusterDiscoveryCallback`).
pub trait Discovery: Default + 'static {
    /// Called once when the extension starts: register this node, and report the nodes known
    /// so far. An `Err` is logged and keeps the broker's current list.
    fn init(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String>;
    /// Called every reload interval: the complete current node list, or "no change".
    fn reload(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String>;
    /// Called once when the extension stops: unregister this node.
    fn destroy(&mut self, _input: &DiscoveryInput) {}
}

/// The broker's log, with this extension's id attached.
pub mod log {
    use crate::bindings::apiary::extension::log::{Level, log};

    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// The extension's `conf/config.properties` (re-read by the broker before every call).
pub mod config {
    pub use crate::bindings::apiary::extension::config::{entries, get};
}

/// HTTP(S) requests to the hosts the operator allows (`http.allow` in the extension's
/// `conf/sandbox.properties`). Interface version 1.1: a broker older than 1.1 refuses a plugin
/// that uses it, with an error naming the missing import.
pub mod http {
    pub use crate::bindings::apiary::extension::http::{Request, Response, send};

    impl Request {
        /// A request with no headers and no body.
        pub fn new(method: &str, url: &str) -> Request {
            Request {
                method: method.into(),
                url: url.into(),
                headers: Vec::new(),
                body: Vec::new(),
            }
        }

        /// Adds a header.
        pub fn header(mut self, name: &str, value: &str) -> Request {
            self.headers.push((name.into(), value.into()));
            self
        }

        /// Sets the body.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
            self.body = body.into();
            self
        }

        /// Sends it (see [`send`]).
        pub fn send(self) -> Result<Response, String> {
            send(&self)
        }
    }

    impl Response {
        /// The first header called `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// Whether the status is 2xx.
        pub fn is_success(&self) -> bool {
            (200..300).contains(&self.status)
        }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Result<Response, String> {
        Request::new("GET", url).send()
    }
}

/// DNS lookups of the names the operator allows (`dns.allow` in the extension's
/// `conf/sandbox.properties`). Interface version 1.1.
pub mod dns {
    pub use crate::bindings::apiary::extension::dns::resolve;
}

/// Exports a [`Discovery`] implementation as the component's `cluster-discovery` interface.
#[macro_export]
macro_rules! export_discovery {
    ($t:ty) => {
        const _: () = {
            use $crate::bindings::exports::apiary::extension::cluster_discovery::Guest;
            // One instance of the extension's state; wasm32-wasip2 runs one thread.
            static STATE: ::std::sync::Mutex<Option<$t>> = ::std::sync::Mutex::new(None);
            fn with<R>(f: impl FnOnce(&mut $t) -> R) -> R {
                let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
                f(state.get_or_insert_with(<$t as ::std::default::Default>::default))
            }
            struct Export;
            impl Guest for Export {
                fn init(input: $crate::DiscoveryInput) -> Result<$crate::DiscoveryOutput, String> {
                    with(|d| $crate::Discovery::init(d, &input))
                }
                fn reload(input: $crate::DiscoveryInput) -> Result<$crate::DiscoveryOutput, String> {
                    with(|d| $crate::Discovery::reload(d, &input))
                }
                fn destroy(input: $crate::DiscoveryInput) {
                    with(|d| $crate::Discovery::destroy(d, &input))
                }
            }
    $crate::bindings::__export_discovery_world!(Export with_types_in $crate::bindings);
        };
    };
}
