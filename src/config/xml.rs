//! A tiny element tree built with quick-xml, recording the line of every element.
//!
//! Only what a configuration file needs: elements, their attributes, and their text (character
//! data, CDATA and entity references joined). Comments, processing instructions and the XML
//! declaration are skipped. A DOCTYPE is rejected (it could define entities we do not expand).

use quick_xml::Reader;
use quick_xml::events::{BytesRef, BytesStart, Event};

use super::env::Substituted;
use super::error::ConfigError;

/// One XML element.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Element {
    /// The tag name as written (including any prefix).
    pub(crate) name: String,
    /// 1-based line of the start tag in the original file.
    pub(crate) line: usize,
    /// Attributes as (name, value).
    pub(crate) attributes: Vec<(String, String)>,
    /// Child elements in document order.
    pub(crate) children: Vec<Element>,
    /// All text directly inside this element, concatenated, untrimmed.
    pub(crate) text: String,
}

impl Element {
    fn new(start: &BytesStart<'_>, line: usize, err: &dyn Fn(String) -> ConfigError) -> Result<Self, ConfigError> {
        let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
        let mut attributes = Vec::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| err(format!("bad attribute in <{name}>: {e}")))?;
            let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
            let value = attr
                .unescape_value()
                .map_err(|e| err(format!("bad value of attribute \"{key}\" in <{name}>: {e}")))?
                .into_owned();
            attributes.push((key, value));
        }
        Ok(Element {
            name,
            line,
            attributes,
            children: Vec::new(),
            text: String::new(),
        })
    }
}

/// Parses the whole document and returns its root element.
pub(crate) fn parse_document(doc: &Substituted, file: &str) -> Result<Element, ConfigError> {
    let text = doc.text.as_str();
    let mut reader = Reader::from_str(text);
    let cfg = reader.config_mut();
    cfg.expand_empty_elements = false;
    cfg.check_end_names = true;
    cfg.check_comments = true;
    cfg.trim_text(false);

    let xml_err = |offset: u64, message: String| ConfigError::Xml {
        file: file.to_string(),
        line: doc.line_of(usize::try_from(offset).unwrap_or(usize::MAX)),
        message,
    };

    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let start_pos = reader.buffer_position();
        let event = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) => return Err(xml_err(reader.error_position(), e.to_string())),
        };
        let line = doc.line_of(usize::try_from(start_pos).unwrap_or(usize::MAX));
        let here = |message: String| ConfigError::Xml {
            file: file.to_string(),
            line,
            message,
        };
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(here("content after the root element".to_string()));
                }
                stack.push(Element::new(&start, line, &here)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(here("content after the root element".to_string()));
                }
                let el = Element::new(&start, line, &here)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                // quick-xml checks that the name matches the open element.
                let Some(el) = stack.pop() else {
                    return Err(here("unexpected closing tag".to_string()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let s = t.xml10_content().map_err(|e| here(e.to_string()))?;
                push_text(&mut stack, &s, &here)?;
            }
            Event::CData(t) => {
                let s = t.xml10_content().map_err(|e| here(e.to_string()))?;
                push_text(&mut stack, &s, &here)?;
            }
            Event::GeneralRef(r) => {
                let s = resolve_ref(&r).map_err(&here)?;
                push_text(&mut stack, &s, &here)?;
            }
            Event::DocType(_) => {
                return Err(here("DOCTYPE declarations are not supported".to_string()));
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(ConfigError::Xml {
            file: file.to_string(),
            line: open.line,
            message: format!("element <{}> is never closed", open.name),
        });
    }
    root.ok_or_else(|| ConfigError::Xml {
        file: file.to_string(),
        line: doc.line_of(text.len()),
        message: "the document has no root element".to_string(),
    })
}

fn push_text(stack: &mut [Element], s: &str, here: &dyn Fn(String) -> ConfigError) -> Result<(), ConfigError> {
    match stack.last_mut() {
        Some(el) => el.text.push_str(s),
        None if s.trim().is_empty() => {}
        None => {
            return Err(here(format!(
                "text outside the root element: \"{}\"",
                shorten(s.trim())
            )));
        }
    }
    Ok(())
}

fn resolve_ref(r: &BytesRef<'_>) -> Result<String, String> {
    if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
        return Ok(c.to_string());
    }
    let name = r.decode().map_err(|e| e.to_string())?;
    let s = match name.as_ref() {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "apos" => "'",
        "quot" => "\"",
        other => return Err(format!("unknown entity &{other};")),
    };
    Ok(s.to_string())
}

/// Shortens text for error messages.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}...")
    }
}
