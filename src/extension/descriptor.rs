//! `hivemq-extension.xml`: an extension's id, name, version, priorities and author.
//!
//! The rules are HiveMQ's: `id`, `name` and `version` are required and not empty, `priority`
//! defaults to 0, `start-priority` to 1000, `author` is optional. Unknown elements are ignored,
//! as HiveMQ's reader does.

use std::path::Path;

use crate::config::{env, xml};

/// The descriptor's file name inside an extension folder.
pub const FILE_NAME: &str = "hivemq-extension.xml";

const DEFAULT_PRIORITY: i32 = 0;
const DEFAULT_START_PRIORITY: i32 = 1000;

/// A parsed `hivemq-extension.xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub id: String,
    pub name: String,
    pub version: String,
    /// Orders callbacks: higher runs first.
    pub priority: i32,
    /// Orders start (and stop): higher first.
    pub start_priority: i32,
    pub author: Option<String>,
}

impl Descriptor {
    pub fn from_file(path: &Path) -> anyhow::Result<Descriptor> {
        let text = std::fs::read_to_string(path)?;
        Descriptor::parse(&text)
    }

    pub fn parse(text: &str) -> anyhow::Result<Descriptor> {
        let doc = env::substitute(text, FILE_NAME, &env::process_env)?;
        let root = xml::parse_document(&doc, FILE_NAME)?;
        anyhow::ensure!(
            root.name == "hivemq-extension",
            "the root element is <{}>, expected <hivemq-extension>",
            root.name
        );
        let text_of = |name: &str| {
            root.children
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.text.trim().to_owned())
                .filter(|t| !t.is_empty())
        };
        let required = |name: &str| text_of(name).ok_or_else(|| anyhow::anyhow!("<{name}> is missing or empty"));
        let int = |name: &str, default: i32| -> anyhow::Result<i32> {
            match text_of(name) {
                None => Ok(default),
                Some(t) => t
                    .parse()
                    .map_err(|_| anyhow::anyhow!("<{name}>: expected an integer, found {t:?}")),
            }
        };
        Ok(Descriptor {
            id: required("id")?,
            name: required("name")?,
            version: required("version")?,
            priority: int("priority", DEFAULT_PRIORITY)?,
            start_priority: int("start-priority", DEFAULT_START_PRIORITY)?,
            author: text_of("author"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_defaults() {
        let d = Descriptor::parse(
            "<?xml version=\"1.0\"?>\n<hivemq-extension>\n  <id>s3</id>\n  <name>S3 Discovery</name>\n  \
             <version>4.1.0</version>\n  <priority>5</priority>\n  <start-priority>-3</start-priority>\n  \
             <author>someone</author>\n  <unknown>x</unknown>\n</hivemq-extension>",
        )
        .unwrap();
        assert_eq!(d.id, "s3");
        assert_eq!(d.name, "S3 Discovery");
        assert_eq!(d.version, "4.1.0");
        assert_eq!((d.priority, d.start_priority), (5, -3));
        assert_eq!(d.author.as_deref(), Some("someone"));

        let d = Descriptor::parse("<hivemq-extension><id>a</id><name>A</name><version>1</version></hivemq-extension>")
            .unwrap();
        assert_eq!((d.priority, d.start_priority, d.author), (0, 1000, None));
    }

    #[test]
    fn refused() {
        for (xml, why) in [
            (
                "<hivemq-extension><name>A</name><version>1</version></hivemq-extension>",
                "<id>",
            ),
            (
                "<hivemq-extension><id> </id><name>A</name><version>1</version></hivemq-extension>",
                "<id>",
            ),
            (
                "<hivemq-extension><id>a</id><name>A</name></hivemq-extension>",
                "<version>",
            ),
            (
                "<hivemq-extension><id>a</id><name>A</name><version>1</version><priority>high</priority></hivemq-extension>",
                "<priority>",
            ),
            ("<extension><id>a</id></extension>", "root element"),
            ("<hivemq-extension><id>a</id>", ""),
        ] {
            let e = Descriptor::parse(xml).unwrap_err().to_string();
            assert!(e.contains(why), "{xml}: {e}");
        }
    }
}
