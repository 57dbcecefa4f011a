//! The one error type of the configuration module.
//!
//! Every variant that points into the file carries the file name, the line and the element path
//! (`<hivemq>/<mqtt>/<keep-alive>`), and its `Display` is a complete sentence such as
//! `config.xml line 12: <hivemq>/<mqtt>/<queued-messages>/<max-queue-size>: expected an integer, found "abc".`

use std::fmt;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("Could not read the configuration file {path}: {error}.")]
    Io {
        /// The path as given.
        path: String,
        /// The underlying I/O error.
        #[source]
        error: std::io::Error,
    },

    /// A `${NAME}` / `${ENV:NAME}` placeholder names a variable that is not set.
    #[error("{file} line {line}: environment variable \"{name}\" (used as \"{placeholder}\") is not set.")]
    UnsetVariable {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the placeholder.
        line: usize,
        /// The variable name.
        name: String,
        /// The placeholder as written.
        placeholder: String,
    },

    /// The text is not well-formed XML.
    #[error("{file} line {line}: malformed XML: {message}.")]
    Xml {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line where the problem was detected.
        line: usize,
        /// What is wrong.
        message: String,
    },

    /// The root element is not `<hivemq>`.
    #[error("{file} line {line}: the root element must be <hivemq>, found <{found}>.")]
    WrongRoot {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the root element.
        line: usize,
        /// The root element's name.
        found: String,
    },

    /// An element that is not allowed at this place.
    #[error("{file} line {line}: {path}: unknown element <{name}>; {}.", AllowedList(allowed))]
    UnknownElement {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the unknown element.
        line: usize,
        /// Path of the parent element.
        path: String,
        /// Name of the unknown element.
        name: String,
        /// The element names allowed in the parent (empty: the parent takes a value).
        allowed: Vec<&'static str>,
    },

    /// An attribute on an element that takes none.
    #[error("{file} line {line}: {path}: unexpected attribute \"{name}\"; configuration elements take no attributes.")]
    UnexpectedAttribute {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the element.
        line: usize,
        /// Path of the element.
        path: String,
        /// The attribute name.
        name: String,
    },

    /// An element that may appear only once appears again.
    #[error(
        "{file} line {line}: {path}: duplicated element; it already appears at line {first_line} and may appear only once."
    )]
    Duplicate {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the second occurrence.
        line: usize,
        /// Path of the duplicated element.
        path: String,
        /// Line of the first occurrence.
        first_line: usize,
    },

    /// A numeric value outside its allowed range.
    #[error("{file} line {line}: {path}: value {value} is out of range; allowed range is {range}.")]
    OutOfRange {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the element.
        line: usize,
        /// Path of the element.
        path: String,
        /// The value as written (trimmed).
        value: String,
        /// The allowed range, as "MIN to MAX".
        range: String,
    },

    /// A value of the wrong type (e.g. text where an integer is expected).
    #[error("{file} line {line}: {path}: expected {expected}, found \"{found}\".")]
    WrongType {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the element.
        line: usize,
        /// Path of the element.
        path: String,
        /// What was expected, with its article ("an integer").
        expected: &'static str,
        /// The value as written (trimmed).
        found: String,
    },

    /// A value that is not one of an enumeration's values.
    #[error("{file} line {line}: {path}: invalid value \"{found}\"; allowed values are {}.", allowed.join(", "))]
    InvalidEnum {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the element.
        line: usize,
        /// Path of the element.
        path: String,
        /// The value as written (trimmed).
        found: String,
        /// The allowed values.
        allowed: Vec<&'static str>,
    },

    /// A required child element is missing.
    #[error("{file} line {line}: {path}: missing required element <{name}>.")]
    Missing {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the parent element.
        line: usize,
        /// Path of the parent element.
        path: String,
        /// Name of the missing element.
        name: &'static str,
    },

    /// Text inside an element that only takes child elements.
    #[error("{file} line {line}: {path}: expected child elements, found text \"{text}\".")]
    TextNotAllowed {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the element.
        line: usize,
        /// Path of the element.
        path: String,
        /// The text (trimmed, shortened).
        text: String,
    },

    /// A value that is well-typed but not acceptable (empty string, conflicting settings ...).
    #[error("{file} line {line}: {path}: {message}.")]
    Invalid {
        /// Name used in messages for the configuration file.
        file: String,
        /// 1-based line of the element.
        line: usize,
        /// Path of the element.
        path: String,
        /// What is wrong, without a trailing period.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, if it points into the file.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::UnsetVariable { line, .. }
            | ConfigError::Xml { line, .. }
            | ConfigError::WrongRoot { line, .. }
            | ConfigError::UnknownElement { line, .. }
            | ConfigError::UnexpectedAttribute { line, .. }
            | ConfigError::Duplicate { line, .. }
            | ConfigError::OutOfRange { line, .. }
            | ConfigError::WrongType { line, .. }
            | ConfigError::InvalidEnum { line, .. }
            | ConfigError::Missing { line, .. }
            | ConfigError::TextNotAllowed { line, .. }
            | ConfigError::Invalid { line, .. } => Some(*line),
        }
    }
}

/// Formats the "allowed here" part of [`ConfigError::UnknownElement`].
struct AllowedList<'a>(&'a [&'static str]);

impl fmt::Display for AllowedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("this element takes a value, not child elements");
        }
        f.write_str("allowed here: ")?;
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "<{name}>")?;
        }
        Ok(())
    }
}
