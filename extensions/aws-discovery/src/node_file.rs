//! A node's object in the bucket, in HiveMQ's format (`ClusterNodeFile`, content version 4): the
//! Base64 of the UTF-8 text `4||||<creation time, ms>||||<cluster id>||||<host>||||<port>`.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};

const VERSION: &str = "4";
const SEPARATOR: &str = "||||";

/// Java's basic Base64 decoder: the standard alphabet, padding optional.
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// When the node wrote the file, in ms since the Unix epoch.
    pub created_ms: u64,
    pub cluster_id: String,
    pub host: String,
    pub port: u16,
}

impl NodeFile {
    /// The object's content: Base64 text.
    pub fn encode(&self) -> String {
        let text = [
            VERSION,
            &self.created_ms.to_string(),
            &self.cluster_id,
            &self.host,
            &self.port.to_string(),
        ]
        .join(SEPARATOR);
        general_purpose::STANDARD.encode(text)
    }

    /// Parses an object's content; `None` for anything HiveMQ skips too: not Base64, not five
    /// fields, another version, a creation time or port that is no number (or out of range),
    /// an empty cluster id or host.
    pub fn parse(content: &[u8]) -> Option<NodeFile> {
        let bytes = DECODER.decode(content.trim_ascii()).ok()?;
        let text = String::from_utf8_lossy(&bytes);
        let fields: Vec<&str> = text.split(SEPARATOR).collect();
        let [version, created, cluster_id, host, port] = fields.as_slice() else {
            return None;
        };
        if *version != VERSION || cluster_id.is_empty() || host.is_empty() {
            return None;
        }
        let created_ms = created.parse::<i64>().ok().filter(|&t| t > 0)?.unsigned_abs();
        Some(NodeFile {
            created_ms,
            cluster_id: (*cluster_id).to_owned(),
            host: (*host).to_owned(),
            port: port.parse().ok()?,
        })
    }

    /// Whether the file is older than `secs` seconds at `now_ms`; never when `secs` is 0.
    pub fn is_older_than(&self, secs: u64, now_ms: u64) -> bool {
        secs != 0 && self.created_ms.saturating_add(secs.saturating_mul(1000)) < now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> NodeFile {
        NodeFile {
            created_ms: 1_700_000_000_123,
            cluster_id: "ABCDE23456".into(),
            host: "10.0.0.7".into(),
            port: 8000,
        }
    }

    #[test]
    fn encodes_hivemqs_text_in_base64() {
        // echo -n '4||||1700000000123||||ABCDE23456||||10.0.0.7||||8000' | base64
        assert_eq!(
            file().encode(),
            "NHx8fHwxNzAwMDAwMDAwMTIzfHx8fEFCQ0RFMjM0NTZ8fHx8MTAuMC4wLjd8fHx8ODAwMA=="
        );
        assert_eq!(NodeFile::parse(file().encode().as_bytes()), Some(file()));
    }

    #[test]
    fn parses_leniently_where_java_does() {
        let no_padding = "NHx8fHwxNzAwMDAwMDAwMTIzfHx8fEFCQ0RFMjM0NTZ8fHx8MTAuMC4wLjd8fHx8ODAwMA";
        assert_eq!(NodeFile::parse(no_padding.as_bytes()), Some(file()));
        let with_newline = format!("{}\n", file().encode());
        assert_eq!(NodeFile::parse(with_newline.as_bytes()), Some(file()));
    }

    #[test]
    fn rejects_what_hivemq_skips() {
        let b64 = |s: &str| general_purpose::STANDARD.encode(s);
        for bad in [
            "3||||1700000000123||||id||||h||||8000",
            "4||||1700000000123||||id||||h",
            "4||||1700000000123||||id||||h||||8000||||x",
            "4||||-5||||id||||h||||8000",
            "4||||0||||id||||h||||8000",
            "4||||soon||||id||||h||||8000",
            "4||||1700000000123||||||||h||||8000",
            "4||||1700000000123||||id||||||||8000",
            "4||||1700000000123||||id||||h||||70000",
            "4||||1700000000123||||id||||h||||",
        ] {
            assert_eq!(NodeFile::parse(b64(bad).as_bytes()), None, "{bad}");
        }
        assert_eq!(NodeFile::parse(b"not base64 at all!"), None);
        assert_eq!(NodeFile::parse(b""), None);
    }

    #[test]
    fn expiry() {
        let f = file();
        assert!(!f.is_older_than(10, f.created_ms + 10_000));
        assert!(f.is_older_than(10, f.created_ms + 10_001));
        assert!(!f.is_older_than(0, u64::MAX), "0 = never");
    }
}
