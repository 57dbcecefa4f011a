//! `${ENV:NAME}` / `${NAME}` placeholder substitution, done on the raw text before XML parsing.
//!
//! Mirrors HiveMQ's `EnvVarUtil`: the pattern is `\$\{(ENV:)*(.*?)\}` (so any number of leading
//! `ENV:` prefixes is dropped, and a placeholder never spans a line break, because `.` does not
//! match `\n`). Values are inserted literally: they are neither XML-escaped nor scanned again.
//! An unset variable is an error naming the variable and the line.

use super::error::ConfigError;

/// The text after substitution, with what is needed to map offsets back to original lines.
#[derive(Debug)]
pub(crate) struct Substituted {
    /// The substituted text.
    pub(crate) text: String,
    /// Byte offsets (in `text`) of every `\n`.
    newlines: Vec<usize>,
    /// For each inserted value that contains line breaks: (offset in `text` just past the value,
    /// total number of line breaks inserted by values up to and including this one).
    shifts: Vec<(usize, usize)>,
}

impl Substituted {
    /// The 1-based line in the *original* text of a byte offset in the substituted text.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let line_in_text = 1 + self.newlines.partition_point(|&nl| nl < offset);
        let idx = self.shifts.partition_point(|&(end, _)| end <= offset);
        let extra = if idx == 0 { 0 } else { self.shifts[idx - 1].1 };
        line_in_text - extra
    }
}

/// Substitutes every placeholder in `text`, looking variables up with `env`.
pub(crate) fn substitute(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Substituted, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut shifts = Vec::new();
    let mut inserted_newlines = 0usize;
    let mut line = 1usize;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let (before, from_dollar) = rest.split_at(start);
        line += before.matches('\n').count();
        out.push_str(before);
        let body = &from_dollar[2..];
        // `(.*?)\}` : the shortest run up to a `}`, not crossing a line break.
        let close = body.find(['}', '\n']).filter(|&i| body.as_bytes()[i] == b'}');
        let Some(close) = close else {
            // Not a placeholder: keep "${" and go on after it (as the regex would).
            out.push_str("${");
            rest = body;
            continue;
        };
        let inner = &body[..close];
        let mut name = inner;
        while let Some(stripped) = name.strip_prefix("ENV:") {
            name = stripped;
        }
        let value = lookup(env, name).ok_or_else(|| ConfigError::UnsetVariable {
            file: file.to_string(),
            line,
            name: name.to_string(),
            placeholder: format!("${{{inner}}}"),
        })?;
        out.push_str(&value);
        let nl = value.matches('\n').count();
        if nl > 0 {
            inserted_newlines += nl;
            shifts.push((out.len(), inserted_newlines));
        }
        rest = &body[close + 1..];
    }
    out.push_str(rest);
    let newlines = out
        .bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'\n')
        .map(|(i, _)| i)
        .collect();
    Ok(Substituted {
        text: out,
        newlines,
        shifts,
    })
}

fn lookup(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    // Names the OS cannot hold are never set (and must not reach `std::env`).
    if name.is_empty() || name.contains(['=', '\0']) {
        return None;
    }
    env(name)
}

/// The process environment as a lookup function (used by `Config::from_file`).
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
