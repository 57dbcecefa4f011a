//! S3 Cluster Discovery: the nodes of a cluster find each other through an S3 bucket (Amazon S3
//! or an S3-compatible store), the way HiveMQ's S3 cluster discovery extension does it, with
//! the same configuration keys and the same objects, so both can share a bucket.
//!
//! - Each node writes one object, `file-prefix` + its cluster id, holding its cluster address
//!   and the time it wrote it ([`node_file`]), on `init` and again whenever the object is
//!   older than `update-interval` at a reload.
//! - Every `init` and reload lists the prefix and reads the objects: the addresses in them are
//!   the node list. An object older than `file-expiration` belongs to a node that stopped
//!   without cleaning up (killed, cut off): it is left out and deleted.
//! - `destroy` deletes the node's own object.
//!
//! Requests are signed with AWS Signature Version 4 (presigned URLs made by rusty-s3) and sent
//! by the broker through the sdk's `http`, to the hosts allowed in `conf/sandbox.properties`.
//!
//! Layout: [`settings`] reads and checks `conf/config.properties`; [`node_file`] is the object
//! format; [`s3`] the S3 calls; this file the discovery itself.

mod node_file;
mod s3;
mod settings;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use apiary_extension_sdk::{Discovery, DiscoveryInput, DiscoveryOutput, NodeAddress, config, log};
use rusty_s3::Credentials;

use node_file::NodeFile;
use s3::Client;
use settings::{CredentialsType, Settings};

#[derive(Default)]
struct S3Discovery {
    /// This node's object as last written.
    own: Option<Written>,
    /// Objects read before, by key: the ETag they had and what they held (`None`: not a node
    /// file), so an unchanged object is not read again.
    seen: HashMap<String, (String, Option<NodeFile>)>,
    /// The last node list reported, to log changes only.
    last: Vec<String>,
    /// The interval settings last warned about, to warn once.
    warned: Option<(u32, u64, u64)>,
}

struct Written {
    key: String,
    file: NodeFile,
}

impl Discovery for S3Discovery {
    fn init(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        let settings = read_settings()?;
        let key = format!("{}{}", settings.file_prefix, input.own_cluster_id);
        log::info(&format!(
            "S3 discovery for node {} at {}:{}: bucket {:?} at {}, this node's object {key:?}",
            input.own_cluster_id,
            input.own_address.host,
            input.own_address.port,
            settings.bucket_name,
            settings.endpoint_url(),
        ));
        // A fresh start writes the own object in any case, as HiveMQ does.
        self.own = None;
        self.seen.clear();
        self.discover(input, &settings)
    }

    fn reload(&mut self, input: &DiscoveryInput) -> Result<DiscoveryOutput, String> {
        let settings = read_settings()?;
        self.discover(input, &settings)
    }

    fn destroy(&mut self, _input: &DiscoveryInput) {
        let Some(own) = self.own.take() else { return };
        let deleted = read_settings()
            .and_then(|settings| Client::new(&settings, credentials(&settings.credentials)?))
            .and_then(|client| client.delete(&own.key));
        match deleted {
            Ok(()) => log::info(&format!("deleted this node's object {:?}", own.key)),
            Err(e) => log::warn(&format!(
                "could not delete this node's object {:?} (it expires by itself): {e}",
                own.key
            )),
        }
    }
}

impl S3Discovery {
    /// Checks the bucket, writes the own object if due, and reads the node list.
    fn discover(&mut self, input: &DiscoveryInput, settings: &Settings) -> Result<DiscoveryOutput, String> {
        let client = Client::new(settings, credentials(&settings.credentials)?)?;
        client.check_bucket()?;
        self.warn_about_intervals(settings, input.reload_interval_secs);
        let key = format!("{}{}", settings.file_prefix, input.own_cluster_id);
        let now = now_ms()?;
        let due = match &self.own {
            None => true,
            Some(own) => {
                own.key != key
                    || own.file.host != input.own_address.host
                    || own.file.port != input.own_address.port
                    || own.file.is_older_than(settings.update_interval, now)
            }
        };
        if due {
            self.write_own(&client, &key, input, now)?;
        }
        let (mut nodes, own_listed) = self.read_nodes(&client, settings, &key, now)?;
        if !own_listed {
            // Deleted behind this node's back (by hand, or as expired by a node whose clock is
            // ahead): back at once rather than after update-interval.
            log::info(&format!("this node's object {key:?} was missing: writing it again"));
            self.write_own(&client, &key, input, now)?;
            nodes.push(input.own_address.clone());
        }
        let mut shown: Vec<String> = nodes.iter().map(|n| format!("{}:{}", n.host, n.port)).collect();
        shown.sort();
        shown.dedup();
        if shown != self.last {
            log::info(&format!("node list: {}", shown.join(", ")));
            self.last = shown;
        }
        Ok(DiscoveryOutput::nodes(nodes))
    }

    /// PutObject of this node's object, created now.
    fn write_own(&mut self, client: &Client, key: &str, input: &DiscoveryInput, now: u64) -> Result<(), String> {
        let file = NodeFile {
            created_ms: now,
            cluster_id: input.own_cluster_id.clone(),
            host: input.own_address.host.clone(),
            port: input.own_address.port,
        };
        client.put(key, &file.encode())?;
        log::debug(&format!("wrote this node's object {key:?}"));
        if let Some(old) = self.own.take().filter(|old| old.key != key) {
            // file-prefix changed: the old object would only wait to expire.
            if let Err(e) = client.delete(&old.key) {
                log::warn(&format!(
                    "could not delete this node's previous object {:?}: {e}",
                    old.key
                ));
            }
        }
        self.own = Some(Written {
            key: key.to_owned(),
            file,
        });
        Ok(())
    }

    /// Lists the prefix and reads every object: the addresses of the node files that have not
    /// expired (expired ones are deleted), and whether `own_key` was among them.
    fn read_nodes(
        &mut self,
        client: &Client,
        settings: &Settings,
        own_key: &str,
        now: u64,
    ) -> Result<(Vec<NodeAddress>, bool), String> {
        let mut nodes = Vec::new();
        let mut own_listed = false;
        let mut seen = HashMap::new();
        for object in client.list(&settings.file_prefix)? {
            let cached = object.etag.as_ref().and_then(|etag| {
                self.seen
                    .get(&object.key)
                    .filter(|(seen_etag, _)| seen_etag == etag)
                    .map(|(_, file)| file.clone())
            });
            let file = match cached {
                Some(file) => file,
                None => match client.get(&object.key) {
                    Ok(content) => {
                        let file = NodeFile::parse(&content);
                        if file.is_none() {
                            log::debug(&format!("skipping {:?}: not a node file", object.key));
                        }
                        file
                    }
                    Err(e) => {
                        log::warn(&format!("skipping {:?}: {e}", object.key));
                        continue;
                    }
                },
            };
            if let Some(etag) = object.etag {
                seen.insert(object.key.clone(), (etag, file.clone()));
            }
            let Some(file) = file else { continue };
            if file.is_older_than(settings.file_expiration, now) {
                log::info(&format!(
                    "the object {:?} of node {} at {}:{} expired {} s ago: deleting it",
                    object.key,
                    file.cluster_id,
                    file.host,
                    file.port,
                    now.saturating_sub(file.created_ms + settings.file_expiration * 1000) / 1000
                ));
                if let Err(e) = client.delete(&object.key) {
                    log::warn(&format!("could not delete the expired object {:?}: {e}", object.key));
                }
                seen.remove(&object.key);
                continue;
            }
            own_listed |= object.key == own_key;
            nodes.push(NodeAddress {
                host: file.host,
                port: file.port,
            });
        }
        self.seen = seen;
        Ok((nodes, own_listed))
    }

    /// The own object is rewritten at reloads only: if a reload interval plus update-interval
    /// reach file-expiration, other nodes may find it expired first.
    fn warn_about_intervals(&mut self, settings: &Settings, reload_secs: u32) {
        let key = (reload_secs, settings.update_interval, settings.file_expiration);
        if settings.file_expiration == 0 || self.warned == Some(key) {
            return;
        }
        if settings.update_interval + u64::from(reload_secs) >= settings.file_expiration {
            log::warn(&format!(
                "update-interval ({} s) + the reload interval ({reload_secs} s) ≥ file-expiration ({} s): \
                 other nodes may see this node's object expire before it is rewritten. Lower \
                 <discovery><extension><reload-interval> or update-interval, or raise file-expiration",
                settings.update_interval, settings.file_expiration
            ));
        }
        self.warned = Some(key);
    }
}

fn read_settings() -> Result<Settings, String> {
    Settings::parse(config::get).map_err(|e| format!("conf/config.properties: {e}"))
}

/// The credentials of `credentials-type`.
fn credentials(kind: &CredentialsType) -> Result<Credentials, String> {
    match kind {
        CredentialsType::AccessKey { id, secret } => Ok(s3::credentials(id, secret, None)),
        CredentialsType::TemporarySession { id, secret, token } => Ok(s3::credentials(id, secret, Some(token))),
        CredentialsType::Default | CredentialsType::EnvironmentVariables => {
            environment_credentials(|name| std::env::var(name).ok()).ok_or_else(|| {
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, or the extension may not read them: \
                 list them (and AWS_SESSION_TOKEN) in env.allow in conf/sandbox.properties"
                    .to_owned()
            })
        }
        CredentialsType::Unavailable(name) => Err(format!(
            "credentials-type {name} needs Java or files, which a WASM extension does not have: use \
             environment_variables, access_key or temporary_session"
        )),
    }
}

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, if set, `AWS_SESSION_TOKEN`; blank counts
/// as unset.
fn environment_credentials(var: impl Fn(&str) -> Option<String>) -> Option<Credentials> {
    let var = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let key = var("AWS_ACCESS_KEY_ID")?;
    let secret = var("AWS_SECRET_ACCESS_KEY")?;
    Some(s3::credentials(&key, &secret, var("AWS_SESSION_TOKEN").as_deref()))
}

fn now_ms() -> Result<u64, String> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_owned())?;
    u64::try_from(since.as_millis()).map_err(|_| "the clock is far in the future".to_owned())
}

apiary_extension_sdk::export_discovery!(S3Discovery);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_credentials_need_key_and_secret() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert!(environment_credentials(env(&[("AWS_ACCESS_KEY_ID", "K")])).is_none());
        assert!(environment_credentials(env(&[("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", " ")])).is_none());
        let c = environment_credentials(env(&[("AWS_ACCESS_KEY_ID", "K"), ("AWS_SECRET_ACCESS_KEY", "S")])).unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("K", "S", None));
        let c = environment_credentials(env(&[
            ("AWS_ACCESS_KEY_ID", "K"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_SESSION_TOKEN", "T"),
        ]))
        .unwrap();
        assert_eq!(c.token(), Some("T"));
    }
}
