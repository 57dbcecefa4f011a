//! Topic names, topic filters, wildcard matching and shared subscriptions (MQTT 5 section 4.7/4.8).

/// A topic name a PUBLISH may carry: non-empty [MQTT-4.7.3-1], no wildcards
/// [MQTT-4.7.1-1], and short enough to encode [MQTT-4.7.3-3].
pub fn valid_topic_name(t: &str) -> bool {
    !t.is_empty() && t.len() <= usize::from(u16::MAX) && !t.contains(['+', '#'])
}

/// A topic filter: non-empty; `#` only as the whole last level [MQTT-4.7.1-2];
/// `+` only as a whole level [MQTT-4.7.1-3].
pub fn valid_topic_filter(f: &str) -> bool {
    if f.is_empty() || f.len() > usize::from(u16::MAX) {
        return false;
    }
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let ok = match level {
            "#" => is_last,
            "+" => true,
            _ => !level.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `topic` (a valid topic name) matches `filter` (a valid, non-shared filter).
///
/// Topics starting with `$` are not matched by a filter starting with a wildcard
/// [MQTT-4.7.2-1]; `#` also matches the parent level ("sport/#" matches "sport").
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The parts of a shared subscription filter `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// Splits a shared subscription filter. `Ok(None)` if `f` is not shared; `Err`
/// if it claims to be shared but is not well-formed: the share name must be
/// non-empty without `+`, `#` or `/` [MQTT-4.8.2-1], followed by a valid filter
/// [MQTT-4.8.2-2].
pub fn parse_shared(f: &str) -> Result<Option<SharedFilter<'_>>, &'static str> {
    let Some(rest) = f.strip_prefix("$share") else {
        return Ok(None);
    };
    let rest = match rest.strip_prefix('/') {
        Some(rest) => rest,
        // "$share" alone is malformed; "$shared/x" is an ordinary filter.
        None if rest.is_empty() => return Err("shared subscription without share name"),
        None => return Ok(None),
    };
    let Some((group, filter)) = rest.split_once('/') else {
        return Err("shared subscription without topic filter");
    };
    if group.is_empty() {
        return Err("empty share name");
    }
    if group.contains(['+', '#']) {
        return Err("share name contains a wildcard");
    }
    if !valid_topic_filter(filter) {
        return Err("invalid topic filter in shared subscription");
    }
    Ok(Some(SharedFilter { group, filter }))
}

/// Stricter UTF-8 check used when the operator enables utf8-validation: rejects control characters U+0001..U+001F,
/// U+007F..U+009F and Unicode non-characters [MQTT-1.5.4-2]. (U+0000 and invalid UTF-8 are ALWAYS rejected by
/// decode [MQTT-1.5.4-1/-2].) U+0000 is rejected here too.
pub fn is_strict_utf8_clean(s: &str) -> bool {
    s.chars().all(|c| {
        let cp = u32::from(c);
        let control = cp <= 0x1F || (0x7F..=0x9F).contains(&cp);
        // U+FDD0..U+FDEF and the last two code points of every plane.
        let non_character = (0xFDD0..=0xFDEF).contains(&cp) || cp & 0xFFFE == 0xFFFE;
        !control && !non_character
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_validity() {
        assert!(valid_topic_name("sport/tennis"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("$SYS/broker"));
        assert!(!valid_topic_name("")); // [MQTT-4.7.3-1]
        assert!(!valid_topic_name("sport/+")); // [MQTT-4.7.1-1]
        assert!(!valid_topic_name("sport/#"));
        assert!(!valid_topic_name("a#"));
    }

    #[test]
    fn topic_filter_validity() {
        for ok in [
            "#",
            "+",
            "sport/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "+/tennis/#",
            "/",
            "a//b",
        ] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        // Spec examples of invalid filters (section 4.7.1).
        for bad in [
            "",
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "sport+",
            "#/a",
            "a/b+/c",
            "++",
        ] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn multi_level_wildcard() {
        // Section 4.7.1.2 examples.
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        assert!(matches("#", "/"));
    }

    #[test]
    fn single_level_wildcard() {
        // Section 4.7.1.3 examples.
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/tennis/#", "sport/tennis/player1"));
    }

    #[test]
    fn exact_and_case_sensitive() {
        assert!(matches("sport/tennis", "sport/tennis"));
        assert!(!matches("sport/tennis", "sport/Tennis"));
        assert!(!matches("sport/tennis", "sport/tennis/"));
        assert!(!matches("sport/tennis/x", "sport/tennis"));
    }

    #[test]
    fn dollar_topics() {
        // [MQTT-4.7.2-1] and section 4.7.2 examples.
        assert!(!matches("#", "$SYS/broker/clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("a/+", "a/$b"));
    }

    #[test]
    fn shared_filters() {
        assert_eq!(
            parse_shared("$share/consumer1/sport/tennis/+"),
            Ok(Some(SharedFilter {
                group: "consumer1",
                filter: "sport/tennis/+"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "#"
            }))
        );
        assert_eq!(parse_shared("sport/tennis"), Ok(None));
        assert_eq!(parse_shared("$SYS/x"), Ok(None));
        assert_eq!(parse_shared("$shared/x"), Ok(None));
        assert!(parse_shared("$share").is_err());
        assert!(parse_shared("$share/").is_err());
        assert!(parse_shared("$share/group").is_err());
        assert!(parse_shared("$share//sport").is_err());
        assert!(parse_shared("$share/g+/sport").is_err());
        assert!(parse_shared("$share/g#/sport").is_err());
        assert!(parse_shared("$share/g/").is_err()); // empty filter
        assert!(parse_shared("$share/g/sport/#/x").is_err());
    }

    #[test]
    fn strict_utf8() {
        assert!(is_strict_utf8_clean("sport/tennis/ünïcødé/日本"));
        assert!(!is_strict_utf8_clean("a\u{0}b"));
        assert!(!is_strict_utf8_clean("a\u{1}b"));
        assert!(!is_strict_utf8_clean("a\u{1F}b"));
        assert!(!is_strict_utf8_clean("a\u{7F}b"));
        assert!(!is_strict_utf8_clean("a\u{9F}b"));
        assert!(is_strict_utf8_clean("a\u{A0}b"));
        assert!(!is_strict_utf8_clean("\u{FDD0}"));
        assert!(!is_strict_utf8_clean("\u{FFFE}"));
        assert!(!is_strict_utf8_clean("\u{FFFF}"));
        assert!(!is_strict_utf8_clean("\u{1FFFF}"));
        assert!(!is_strict_utf8_clean("\u{10FFFF}"));
        assert!(is_strict_utf8_clean("\u{FEFF}"));
    }
}
