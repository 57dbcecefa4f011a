//! An extension's own configuration, `conf/config.properties`, as the plugin's `config`
//! interface serves it.
//!
//! A small subset of Java's properties format, the one HiveMQ's extensions ship: one
//! `key=value` or `key:value` per line, surrounding blanks trimmed, `#` and `!` start comment
//! lines. No escapes or line continuations.

use std::path::Path;

/// Where the file is, relative to the extension folder.
pub const RELATIVE_PATH: &str = "conf/config.properties";

/// Keys and values in file order (a repeated key: the last one wins in [`get`]).
pub type Properties = Vec<(String, String)>;

/// Reads the file; a missing file is an empty configuration.
pub fn read(folder: &Path) -> std::io::Result<Properties> {
    match std::fs::read_to_string(folder.join(RELATIVE_PATH)) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

pub fn parse(text: &str) -> Properties {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| match l.find(['=', ':']) {
            Some(i) => (l[..i].trim().to_owned(), l[i + 1..].trim().to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect()
}

pub fn get<'a>(properties: &'a Properties, key: &str) -> Option<&'a str> {
    properties.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hivemq_style_files() {
        let p = parse("# comment\n! also\ns3-bucket-name:hivemq\n file-prefix = a/b: c \nflag\n\nx=1\nx=2\n");
        assert_eq!(get(&p, "s3-bucket-name"), Some("hivemq"));
        assert_eq!(get(&p, "file-prefix"), Some("a/b: c"));
        assert_eq!(get(&p, "flag"), Some(""));
        assert_eq!(get(&p, "x"), Some("2"));
        assert_eq!(get(&p, "missing"), None);
        assert_eq!(p.len(), 5);
    }
}
