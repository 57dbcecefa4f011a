//! `conf/config.properties`: the keys and checks of HiveMQ's S3 cluster discovery extension.

/// HiveMQ's value of `s3-endpoint` that means "Amazon S3 itself" (and its default).
pub const AWS_ENDPOINT: &str = "s3.amazonaws.com";

/// Where the request credentials come from (`credentials-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsType {
    /// `default`: HiveMQ's default chain. In the sandbox only its first link exists, the
    /// environment variables.
    Default,
    /// `environment_variables`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional
    /// `AWS_SESSION_TOKEN`.
    EnvironmentVariables,
    /// `access_key`: `credentials-access-key-id` and `credentials-secret-access-key`.
    AccessKey { id: String, secret: String },
    /// `temporary_session`: the access key plus `credentials-session-token`.
    TemporarySession { id: String, secret: String, token: String },
    /// A HiveMQ type a WASM extension cannot use (it needs Java or the file system), by name.
    Unavailable(&'static str),
}

/// The extension's configuration, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub bucket_name: String,
    pub bucket_region: String,
    /// Prepended to the cluster id to make a node's object key.
    pub file_prefix: String,
    /// Seconds after its creation time a node file is expired (and deleted); 0 = never.
    pub file_expiration: u64,
    /// Seconds after which a node rewrites its own file; 0 = never.
    pub update_interval: u64,
    /// `s3.amazonaws.com`, or the address of an S3-compatible store.
    pub endpoint: String,
    pub endpoint_region: Option<String>,
    /// Unset: path style only where virtual hosts cannot work (see [`Settings::path_style`]).
    pub path_style_access: Option<bool>,
    pub credentials: CredentialsType,
}

impl Settings {
    /// Reads and checks the configuration; `get` returns a key's value, if set. The checks
    /// are HiveMQ's (`ConfigurationReader`), and so are the defaults.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        // Java properties trim leading blanks; a blank value counts as unset, as in HiveMQ.
        let get = |key: &str| get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let bucket_name = get("s3-bucket-name").ok_or("s3-bucket-name: the bucket name is empty")?;
        let bucket_region = get("s3-bucket-region").ok_or("s3-bucket-region: the bucket region is empty")?;
        if !is_region(&bucket_region) {
            return Err(format!("s3-bucket-region: {bucket_region:?} is not an AWS region id"));
        }
        let credentials = credentials(&get)?;
        let file_expiration = seconds(&get, "file-expiration")?;
        let update_interval = seconds(&get, "update-interval")?;
        check_intervals(file_expiration, update_interval)?;
        let endpoint = get("s3-endpoint").unwrap_or_else(|| AWS_ENDPOINT.to_owned());
        let endpoint_region = get("s3-endpoint-region");
        let path_style_access = match get("s3-path-style-access") {
            None => None,
            Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
            Some(v) => return Err(format!("s3-path-style-access: expected true or false, not {v:?}")),
        };
        Ok(Settings {
            bucket_name,
            bucket_region,
            file_prefix: get("file-prefix").unwrap_or_default(),
            file_expiration,
            update_interval,
            endpoint,
            endpoint_region,
            path_style_access,
            credentials,
        })
    }

    /// The base URL requests go to: Amazon's regional endpoint for `s3.amazonaws.com`, else
    /// `s3-endpoint` (`https://` is prepended when it has no scheme, as HiveMQ does).
    pub fn endpoint_url(&self) -> String {
        if self.endpoint == AWS_ENDPOINT {
            let suffix = if self.bucket_region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            format!("https://s3.{}.{suffix}", self.bucket_region)
        } else if self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://") {
            self.endpoint.clone()
        } else {
            format!("https://{}", self.endpoint)
        }
    }

    /// The region requests are signed for: `s3-endpoint-region` for another endpoint when set,
    /// else the bucket's region.
    pub fn signing_region(&self) -> &str {
        match &self.endpoint_region {
            Some(region) if self.endpoint != AWS_ENDPOINT => region,
            _ => &self.bucket_region,
        }
    }

    /// Whether to use path-style URLs (`https://host/bucket/key`) rather than virtual hosts
    /// (`https://bucket.host/key`). Unset `s3-path-style-access` picks virtual hosts, as the
    /// AWS SDK does, except where they cannot work: a host that is an IP address or
    /// `localhost`, or a bucket name that is no DNS label.
    pub fn path_style(&self, endpoint_host: &str) -> bool {
        if let Some(set) = self.path_style_access {
            return set;
        }
        let ip = endpoint_host.parse::<std::net::IpAddr>().is_ok() || endpoint_host.starts_with('[');
        let dns_label = (3..=63).contains(&self.bucket_name.len())
            && self
                .bucket_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.bucket_name.starts_with('-')
            && !self.bucket_name.ends_with('-');
        ip || endpoint_host == "localhost" || !dns_label
    }
}

/// `credentials-type` and the keys it needs.
fn credentials(get: &impl Fn(&str) -> Option<String>) -> Result<CredentialsType, String> {
    let kind = get("credentials-type").ok_or("credentials-type: the authentication type is empty")?;
    let key =
        |name: &str, what: &str| get(name).ok_or(format!("{name}: the {what} is empty (credentials-type {kind})"));
    Ok(match kind.as_str() {
        "default" => CredentialsType::Default,
        "environment_variables" => CredentialsType::EnvironmentVariables,
        "java_system_properties" => CredentialsType::Unavailable("java_system_properties"),
        "user_credentials_file" => CredentialsType::Unavailable("user_credentials_file"),
        "instance_profile_credentials" => CredentialsType::Unavailable("instance_profile_credentials"),
        "access_key" => CredentialsType::AccessKey {
            id: key("credentials-access-key-id", "access key id")?,
            secret: key("credentials-secret-access-key", "access key secret")?,
        },
        "temporary_session" => CredentialsType::TemporarySession {
            id: key("credentials-access-key-id", "access key id")?,
            secret: key("credentials-secret-access-key", "access key secret")?,
            token: key("credentials-session-token", "session token")?,
        },
        other => {
            return Err(format!(
                "credentials-type: {other:?} is not one of default, environment_variables, access_key, \
                 temporary_session, java_system_properties, user_credentials_file, instance_profile_credentials"
            ));
        }
    })
}

/// A required number of seconds, ≥ 0.
fn seconds(get: &impl Fn(&str) -> Option<String>, key: &str) -> Result<u64, String> {
    let text = get(key).ok_or(format!("{key}: not set"))?;
    match text.parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("{key}: negative ({n})")),
        Ok(n) => Ok(n.unsigned_abs()),
        Err(_) => Err(format!("{key}: not a number of seconds: {text:?}")),
    }
}

/// HiveMQ's rule: both 0 (no refresh, no expiry), or `update-interval` < `file-expiration`.
fn check_intervals(file_expiration: u64, update_interval: u64) -> Result<(), String> {
    match (file_expiration, update_interval) {
        (0, 0) => Ok(()),
        (e, u) if e == u => Err(format!(
            "update-interval ({u}) is the same as file-expiration ({e}): it must be smaller"
        )),
        (_, 0) => Err("update-interval is 0 (no refresh) but file-expiration is set: set both to 0 or neither".into()),
        (0, _) => Err("file-expiration is 0 (no expiry) but update-interval is set: set both to 0 or neither".into()),
        (e, u) if u > e => Err(format!(
            "update-interval ({u}) is larger than file-expiration ({e}): it must be smaller"
        )),
        _ => Ok(()),
    }
}

/// Whether `region` looks like an AWS region id (`us-east-1`, `eu-central-2`, `us-gov-west-1`,
/// `cn-northwest-1`, `us-isob-east-1`). HiveMQ checks against the AWS SDK's list; a pattern
/// does not go stale when AWS opens a region.
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let Some((last, first)) = parts.split_last() else {
        return false;
    };
    parts.len() >= 3
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
        && first
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HiveMQ's shipped `conf/config.properties`, with access keys.
    const SHIPPED: &[(&str, &str)] = &[
        ("s3-bucket-region", "us-east-1"),
        ("s3-bucket-name", "hivemq"),
        ("file-prefix", "hivemq/cluster/nodes/"),
        ("file-expiration", "360"),
        ("update-interval", "180"),
        ("s3-endpoint", "s3.amazonaws.com"),
        ("credentials-type", "access_key"),
        ("credentials-access-key-id", "AKID"),
        ("credentials-secret-access-key", "SECRET"),
    ];

    fn parse(pairs: &[(&str, &str)], changes: &[(&str, Option<&str>)]) -> Result<Settings, String> {
        let mut map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (k, v) in changes {
            match v {
                Some(v) => map.insert(k.to_string(), v.to_string()),
                None => map.remove(*k),
            };
        }
        Settings::parse(|k| map.get(k).cloned())
    }

    #[test]
    fn shipped_values() {
        let s = parse(SHIPPED, &[]).unwrap();
        assert_eq!(s.bucket_name, "hivemq");
        assert_eq!(s.file_prefix, "hivemq/cluster/nodes/");
        assert_eq!((s.file_expiration, s.update_interval), (360, 180));
        assert_eq!(s.endpoint_url(), "https://s3.us-east-1.amazonaws.com");
        assert_eq!(s.signing_region(), "us-east-1");
        assert!(!s.path_style("s3.us-east-1.amazonaws.com"));
        assert_eq!(
            s.credentials,
            CredentialsType::AccessKey {
                id: "AKID".into(),
                secret: "SECRET".into()
            }
        );
    }

    #[test]
    fn defaults_for_optional_keys() {
        let s = parse(SHIPPED, &[("s3-endpoint", None), ("file-prefix", None)]).unwrap();
        assert_eq!(s.endpoint, AWS_ENDPOINT);
        assert_eq!(s.file_prefix, "");
        assert_eq!(s.path_style_access, None);
        let cn = parse(SHIPPED, &[("s3-bucket-region", Some("cn-north-1"))]).unwrap();
        assert_eq!(cn.endpoint_url(), "https://s3.cn-north-1.amazonaws.com.cn");
    }

    #[test]
    fn other_endpoint() {
        let s = parse(
            SHIPPED,
            &[
                ("s3-endpoint", Some("minio.example.com:9000")),
                ("s3-endpoint-region", Some("eu-west-1")),
            ],
        )
        .unwrap();
        assert_eq!(s.endpoint_url(), "https://minio.example.com:9000");
        assert_eq!(s.signing_region(), "eu-west-1");
        let s = parse(SHIPPED, &[("s3-endpoint", Some("http://10.0.0.5:9000"))]).unwrap();
        assert_eq!(s.endpoint_url(), "http://10.0.0.5:9000");
        assert_eq!(s.signing_region(), "us-east-1");
        assert!(s.path_style("10.0.0.5"), "an IP address cannot carry the bucket name");
        let s = parse(
            SHIPPED,
            &[
                ("s3-endpoint", Some("http://10.0.0.5:9000")),
                ("s3-path-style-access", Some("false")),
            ],
        )
        .unwrap();
        assert!(!s.path_style("10.0.0.5"), "an explicit setting wins");
        let dotted = parse(SHIPPED, &[("s3-bucket-name", Some("my.bucket"))]).unwrap();
        assert!(dotted.path_style("s3.us-east-1.amazonaws.com"));
    }

    #[test]
    fn interval_rules_are_hivemqs() {
        let with = |e: &str, u: &str| parse(SHIPPED, &[("file-expiration", Some(e)), ("update-interval", Some(u))]);
        assert!(with("0", "0").is_ok());
        assert!(with("10", "5").is_ok());
        assert!(with("10", "10").unwrap_err().contains("same"));
        assert!(with("10", "0").is_err());
        assert!(with("0", "10").is_err());
        assert!(with("5", "10").unwrap_err().contains("larger"));
        assert!(with("-1", "0").unwrap_err().contains("negative"));
        assert!(with("ten", "5").unwrap_err().contains("not a number"));
        assert!(
            parse(SHIPPED, &[("update-interval", None)])
                .unwrap_err()
                .contains("not set")
        );
    }

    #[test]
    fn required_keys_and_credentials() {
        assert!(parse(SHIPPED, &[("s3-bucket-name", Some("  "))]).is_err());
        assert!(parse(SHIPPED, &[("s3-bucket-region", Some("mars"))]).is_err());
        assert!(parse(SHIPPED, &[("s3-bucket-region", Some("us-gov-west-1"))]).is_ok());
        assert!(parse(SHIPPED, &[("credentials-type", Some("magic"))]).is_err());
        assert!(parse(SHIPPED, &[("credentials-secret-access-key", None)]).is_err());
        assert!(parse(SHIPPED, &[("credentials-type", Some("temporary_session"))]).is_err());
        let s = parse(
            SHIPPED,
            &[
                ("credentials-type", Some("temporary_session")),
                ("credentials-session-token", Some("TOKEN")),
            ],
        )
        .unwrap();
        assert!(matches!(s.credentials, CredentialsType::TemporarySession { token, .. } if token == "TOKEN"));
        let s = parse(SHIPPED, &[("credentials-type", Some("environment_variables"))]).unwrap();
        assert_eq!(s.credentials, CredentialsType::EnvironmentVariables);
        assert!(parse(SHIPPED, &[("s3-path-style-access", Some("maybe"))]).is_err());
    }
}
