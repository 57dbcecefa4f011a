//! Strict walking of the element tree: every check that turns a tree into typed values lives
//! here, so that each section's parser only says which children exist and what they mean.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

use super::error::ConfigError;
use super::xml::{Element, shorten};

/// An element together with its path and the file name, ready to be read.
#[derive(Debug, Clone)]
pub(crate) struct Node<'a> {
    pub(crate) el: &'a Element,
    pub(crate) path: String,
    pub(crate) file: &'a str,
}

impl<'a> Node<'a> {
    /// The root node.
    pub(crate) fn root(el: &'a Element, file: &'a str) -> Self {
        Node {
            el,
            path: format!("<{}>", el.name),
            file,
        }
    }

    fn child_node(&self, el: &'a Element) -> Node<'a> {
        Node {
            el,
            path: format!("{}/<{}>", self.path, el.name),
            file: self.file,
        }
    }

    /// 1-based line of this element.
    pub(crate) fn line(&self) -> usize {
        self.el.line
    }

    /// An [`ConfigError::Invalid`] pointing at this element.
    pub(crate) fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            line: self.line(),
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn check_attributes(&self, allow_any_namespace_attr: bool) -> Result<(), ConfigError> {
        for (name, _) in &self.el.attributes {
            let ns_decl = name == "xmlns" || name.starts_with("xmlns:");
            let xsi = name.starts_with("xsi:");
            if ns_decl || (allow_any_namespace_attr && xsi) {
                continue;
            }
            return Err(ConfigError::UnexpectedAttribute {
                file: self.file.to_string(),
                line: self.line(),
                path: self.path.clone(),
                name: name.clone(),
            });
        }
        Ok(())
    }

    /// Checks that this element holds only child elements named in `allowed` (no text, no
    /// attributes except namespace declarations) and that none of them except those in
    /// `repeatable` appears twice.
    pub(crate) fn expect_children(
        &self,
        allowed: &[&'static str],
        repeatable: &[&'static str],
    ) -> Result<(), ConfigError> {
        self.check_attributes(self.path == "<hivemq>")?;
        let text = self.el.text.trim();
        if !text.is_empty() {
            return Err(ConfigError::TextNotAllowed {
                file: self.file.to_string(),
                line: self.line(),
                path: self.path.clone(),
                text: shorten(text),
            });
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for child in &self.el.children {
            if !allowed.contains(&child.name.as_str()) {
                return Err(ConfigError::UnknownElement {
                    file: self.file.to_string(),
                    line: child.line,
                    path: self.path.clone(),
                    name: child.name.clone(),
                    allowed: allowed.to_vec(),
                });
            }
            if repeatable.contains(&child.name.as_str()) {
                continue;
            }
            if let Some(first_line) = seen.insert(child.name.as_str(), child.line) {
                return Err(ConfigError::Duplicate {
                    file: self.file.to_string(),
                    line: child.line,
                    path: self.child_node(child).path,
                    first_line,
                });
            }
        }
        Ok(())
    }

    /// The first child with this name.
    pub(crate) fn child(&self, name: &str) -> Option<Node<'a>> {
        self.el
            .children
            .iter()
            .find(|c| c.name == name)
            .map(|c| self.child_node(c))
    }

    /// The child with this name, or a "missing required element" error.
    pub(crate) fn required(&self, name: &'static str) -> Result<Node<'a>, ConfigError> {
        self.child(name).ok_or_else(|| ConfigError::Missing {
            file: self.file.to_string(),
            line: self.line(),
            path: self.path.clone(),
            name,
        })
    }

    /// All children, in document order.
    pub(crate) fn children(&self) -> impl Iterator<Item = Node<'a>> + '_ {
        self.el.children.iter().map(|c| self.child_node(c))
    }

    /// The trimmed text of a value element (one without child elements).
    pub(crate) fn text(&self) -> Result<&'a str, ConfigError> {
        self.check_attributes(false)?;
        if let Some(child) = self.el.children.first() {
            return Err(ConfigError::UnknownElement {
                file: self.file.to_string(),
                line: child.line,
                path: self.path.clone(),
                name: child.name.clone(),
                allowed: Vec::new(),
            });
        }
        Ok(self.el.text.trim())
    }

    /// A non-empty string value.
    pub(crate) fn string(&self) -> Result<String, ConfigError> {
        let s = self.text()?;
        if s.is_empty() {
            return Err(self.invalid("the value must not be empty"));
        }
        Ok(s.to_string())
    }

    /// A string value that may be empty (passwords).
    pub(crate) fn string_allow_empty(&self) -> Result<String, ConfigError> {
        Ok(self.text()?.to_string())
    }

    /// `true` or `false`, case-insensitive.
    pub(crate) fn bool(&self) -> Result<bool, ConfigError> {
        let s = self.text()?;
        if s.eq_ignore_ascii_case("true") {
            Ok(true)
        } else if s.eq_ignore_ascii_case("false") {
            Ok(false)
        } else {
            Err(self.wrong_type("a boolean (true or false)", s))
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn int<T>(&self, min: T, max: T) -> Result<T, ConfigError>
    where
        T: TryFrom<i128> + Into<i128> + Copy + Display,
    {
        let s = self.text()?;
        let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.wrong_type("an integer", s));
        }
        let out_of_range = || ConfigError::OutOfRange {
            file: self.file.to_string(),
            line: self.line(),
            path: self.path.clone(),
            value: s.to_string(),
            range: format!("{min} to {max}"),
        };
        let v = i128::from_str(s).map_err(|_| out_of_range())?;
        if v < min.into() || v > max.into() {
            return Err(out_of_range());
        }
        T::try_from(v).map_err(|_| out_of_range())
    }

    /// One of `values` (matched case-insensitively), mapped to its meaning.
    pub(crate) fn one_of<T: Clone>(&self, values: &[(&'static str, T)]) -> Result<T, ConfigError> {
        let s = self.text()?;
        values
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| ConfigError::InvalidEnum {
                file: self.file.to_string(),
                line: self.line(),
                path: self.path.clone(),
                found: shorten(s),
                allowed: values.iter().map(|(n, _)| *n).collect(),
            })
    }

    fn wrong_type(&self, expected: &'static str, found: &str) -> ConfigError {
        ConfigError::WrongType {
            file: self.file.to_string(),
            line: self.line(),
            path: self.path.clone(),
            expected,
            found: shorten(found),
        }
    }

    // ---- shorthands for optional children --------------------------------------------------

    /// Reads the child `name` with `read`, if present.
    pub(crate) fn opt<T>(
        &self,
        name: &str,
        read: impl FnOnce(&Node<'a>) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        self.child(name).map(|c| read(&c)).transpose()
    }

    /// Optional boolean child, with a default.
    pub(crate) fn bool_or(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        Ok(self.opt(name, Node::bool)?.unwrap_or(default))
    }

    /// Optional integer child in `min..=max`, with a default.
    pub(crate) fn int_or<T>(&self, name: &str, min: T, max: T, default: T) -> Result<T, ConfigError>
    where
        T: TryFrom<i128> + Into<i128> + Copy + Display,
    {
        Ok(self.opt(name, |n| n.int(min, max))?.unwrap_or(default))
    }

    /// Optional non-empty string child.
    pub(crate) fn opt_string(&self, name: &str) -> Result<Option<String>, ConfigError> {
        self.opt(name, Node::string)
    }

    /// Reads `<wrapper><enabled>bool</enabled></wrapper>`-style sections.
    pub(crate) fn enabled_section(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        self.opt(name, |n| {
            n.expect_children(&["enabled"], &[])?;
            n.bool_or("enabled", default)
        })
        .map(|v| v.unwrap_or(default))
    }

    /// Reads a list element such as `<protocols><protocol>a</protocol>...</protocols>`.
    pub(crate) fn string_list(&self, item: &'static str) -> Result<Vec<String>, ConfigError> {
        self.expect_children(&[item], &[item])?;
        self.children().map(|c| c.string()).collect()
    }
}
