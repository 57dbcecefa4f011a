//! Results: one [`Report`] per run (JSON), merged across runs and printed as a side-by-side table
//! with the ratio of the first target (the subject, Apiary) to the second (the baseline,
//! mosquitto) and each figure's goal.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One measured number of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// Stable identifier, e.g. `1.qos0` or `3.p99`; goals are looked up by it.
    pub key: String,
    /// Scenario label, e.g. `1 fan-in 1000→1 QoS 0`.
    pub scenario: String,
    /// What is measured, e.g. `delivered`.
    pub metric: String,
    /// `msg/s`, `conn/s`, `ms` or `B/conn`.
    pub unit: String,
    /// `None` when the measurement failed (see `error`).
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Counts and settings behind the value.
    #[serde(default)]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    pub name: String,
    pub addr: String,
    pub figures: Vec<Figure>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Targets in order: the first is the subject, the second the baseline of the ratios.
    pub targets: Vec<TargetReport>,
    pub parameters: serde_json::Value,
    pub notes: Vec<String>,
}

/// What a figure of the subject must achieve against the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// subject ≥ factor × baseline.
    AtLeast(f64),
    /// subject ≤ factor × baseline.
    AtMost(f64),
    /// subject ≤ factor × baseline and subject < limit.
    AtMostAndBelow(f64, f64),
    /// Reported, no goal.
    Info,
}

impl Goal {
    pub fn of(key: &str) -> Goal {
        match key {
            "1.qos0" | "1.qos1" | "2.qos0" | "2.qos1" | "3.rate" | "6.rate" => Goal::AtLeast(1.5),
            "3.p99" => Goal::AtMost(1.0),
            "4.bytes" => Goal::AtMostAndBelow(1.0, 2048.0),
            "5.rate" => Goal::AtLeast(1.0),
            _ => Goal::Info,
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::AtLeast(f) => format!("≥ {f}×"),
            Goal::AtMost(f) => format!("≤ {f}×"),
            Goal::AtMostAndBelow(f, limit) => format!("≤ {f}×, < {}", limit),
            Goal::Info => String::new(),
        }
    }

    /// `None` when there is no goal or a value is missing.
    pub fn met(self, subject: Option<f64>, baseline: Option<f64>) -> Option<bool> {
        let s = subject?;
        match self {
            Goal::Info => None,
            Goal::AtLeast(f) => Some(s >= f * baseline?),
            Goal::AtMost(f) => Some(s <= f * baseline?),
            Goal::AtMostAndBelow(f, limit) => Some(s <= f * baseline? && s < limit),
        }
    }
}

impl Report {
    /// Adds the targets, figures and notes of `other` (same target names are merged).
    pub fn merge(&mut self, other: Report) {
        for t in other.targets {
            match self.targets.iter_mut().find(|mine| mine.name == t.name) {
                Some(mine) => {
                    mine.figures.retain(|f| !t.figures.iter().any(|g| g.key == f.key));
                    mine.figures.extend(t.figures);
                }
                None => self.targets.push(t),
            }
        }
        if self.parameters.is_null() {
            self.parameters = other.parameters;
        }
        for n in other.notes {
            if !self.notes.contains(&n) {
                self.notes.push(n);
            }
        }
    }

    /// Figure keys in first-seen order.
    fn keys(&self) -> Vec<(String, String, String, String)> {
        let mut keys: Vec<(String, String, String, String)> = Vec::new();
        for t in &self.targets {
            for f in &t.figures {
                if !keys.iter().any(|k| k.0 == f.key) {
                    keys.push((f.key.clone(), f.scenario.clone(), f.metric.clone(), f.unit.clone()));
                }
            }
        }
        keys
    }

    fn value(&self, target: usize, key: &str) -> Option<&Figure> {
        self.targets.get(target)?.figures.iter().find(|f| f.key == key)
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        let mut header = vec!["scenario".to_owned(), "figure".to_owned()];
        header.extend(names.iter().map(|n| (*n).to_owned()));
        let comparing = names.len() >= 2;
        if comparing {
            header.push(format!("{}/{}", names[0], names[1]));
            header.push("target".to_owned());
            header.push("result".to_owned());
        }
        let mut rows = vec![header];
        let (mut passed, mut missed) = (0, 0);
        for (key, scenario, metric, unit) in self.keys() {
            let mut row = vec![scenario, format!("{metric} ({unit})")];
            let figures: Vec<Option<&Figure>> = (0..names.len()).map(|i| self.value(i, &key)).collect();
            for f in &figures {
                row.push(match f {
                    Some(Figure { value: Some(v), .. }) => format_value(*v, &unit),
                    Some(Figure { error: Some(e), .. }) => format!("error: {}", shorten(e, 40)),
                    _ => "-".to_owned(),
                });
            }
            if comparing {
                let s = figures[0].and_then(|f| f.value);
                let b = figures[1].and_then(|f| f.value);
                row.push(match (s, b) {
                    (Some(s), Some(b)) if b != 0.0 => format!("{:.2}×", s / b),
                    _ => "-".to_owned(),
                });
                let goal = Goal::of(&key);
                row.push(goal.describe());
                row.push(match goal.met(s, b) {
                    Some(true) => {
                        passed += 1;
                        "PASS".to_owned()
                    }
                    Some(false) => {
                        missed += 1;
                        "MISS".to_owned()
                    }
                    None if goal != Goal::Info => {
                        missed += 1;
                        "MISS (no value)".to_owned()
                    }
                    None => String::new(),
                });
            }
            rows.push(row);
        }
        // Values and the ratio are right-aligned; the goal and result columns are text.
        let numbers = 2..2 + names.len() + usize::from(comparing);
        let mut out = render(&rows, numbers);
        if comparing {
            let _ = writeln!(
                out,
                "\ntargets: {passed} PASS, {missed} MISS ({} vs {})",
                names[0], names[1]
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

fn render(rows: &[Vec<String>], right: std::ops::Range<usize>) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let pad = widths[c] - cell.chars().count();
                if right.contains(&c) {
                    format!("{}{cell}", " ".repeat(pad))
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let _ = writeln!(
                out,
                "{}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (columns.saturating_sub(1)))
            );
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// Rates with thousands separators, latencies in ms with 3 decimals, bytes with none.
pub fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{v:.3}"),
        _ => {
            let rounded = v.round() as i64;
            let digits = rounded.unsigned_abs().to_string();
            let mut grouped = String::new();
            for (i, ch) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i).is_multiple_of(3) {
                    grouped.push(',');
                }
                grouped.push(ch);
            }
            if rounded < 0 { format!("-{grouped}") } else { grouped }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(key: &str, value: f64) -> Figure {
        Figure {
            key: key.into(),
            scenario: format!("scenario {key}"),
            metric: "delivered".into(),
            unit: "msg/s".into(),
            value: Some(value),
            error: None,
            details: serde_json::Value::Null,
        }
    }

    #[test]
    fn goals() {
        assert_eq!(Goal::of("1.qos0").met(Some(150.0), Some(100.0)), Some(true));
        assert_eq!(Goal::of("1.qos0").met(Some(149.0), Some(100.0)), Some(false));
        assert_eq!(Goal::of("3.p99").met(Some(2.0), Some(2.5)), Some(true));
        assert_eq!(Goal::of("4.bytes").met(Some(1500.0), Some(1600.0)), Some(true));
        assert_eq!(Goal::of("4.bytes").met(Some(2100.0), Some(3000.0)), Some(false));
        assert_eq!(Goal::of("5.rate").met(Some(1.0), None), None);
        assert_eq!(Goal::of("3.p50").met(Some(1.0), Some(2.0)), None);
    }

    #[test]
    fn table_compares_the_first_two_targets() {
        let mut r = Report::default();
        r.merge(Report {
            targets: vec![
                TargetReport {
                    name: "apiary".into(),
                    addr: "a".into(),
                    figures: vec![figure("1.qos0", 300_000.0)],
                },
                TargetReport {
                    name: "mosquitto".into(),
                    addr: "b".into(),
                    figures: vec![figure("1.qos0", 100_000.0)],
                },
            ],
            parameters: serde_json::Value::Null,
            notes: vec!["hello".into()],
        });
        r.merge(Report {
            targets: vec![
                TargetReport {
                    name: "apiary".into(),
                    addr: "a".into(),
                    figures: vec![figure("2.qos0", 10.0)],
                },
                TargetReport {
                    name: "mosquitto".into(),
                    addr: "b".into(),
                    figures: vec![figure("2.qos0", 10.0)],
                },
            ],
            parameters: serde_json::Value::Null,
            notes: vec!["hello".into()],
        });
        let t = r.table();
        assert!(t.contains("300,000"), "{t}");
        assert!(t.contains("3.00×"), "{t}");
        assert!(t.contains("PASS") && t.contains("MISS"), "{t}");
        assert!(t.contains("targets: 1 PASS, 1 MISS"), "{t}");
        assert_eq!(t.matches("note: hello").count(), 1, "{t}");
    }

    #[test]
    fn formats() {
        assert_eq!(format_value(1234567.4, "msg/s"), "1,234,567");
        assert_eq!(format_value(-1234.0, "B/conn"), "-1,234");
        assert_eq!(format_value(0.12345, "ms"), "0.123");
    }
}
