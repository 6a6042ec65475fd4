//! Text that peers chose (client ids, user names, topics, plugin log
//! lines) on its way into the broker's log.
//!
//! The text log writes a `%`-formatted field as it is, so a client id
//! holding a line feed could start a forged log line, and an ANSI escape
//! could rewrite the operator's terminal. [`Untrusted`] shows such text with
//! every control character, every Unicode line or paragraph separator and
//! every bidirectional override escaped (`\n`, `\u{1b}`, `\u{202e}`), and
//! the backslash too, so an escape in the log always means one in the name.
//! Plain names print unchanged.

use std::fmt;

/// Peer-chosen text, displayed with control characters escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untrusted<'a>(pub &'a str);

impl Untrusted<'_> {
    /// A field value for an optional name, absent when the name is.
    pub fn field(name: Option<&str>) -> Option<tracing::field::DisplayValue<Untrusted<'_>>> {
        name.map(|n| tracing::field::display(Untrusted(n)))
    }
}

/// Whether `c` must not reach a log line as itself.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            if let Some(c) = chars.next() {
                match c {
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    '\\' => f.write_str("\\\\")?,
                    c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                }
            }
            rest = chars.as_str();
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_print_unchanged() {
        for name in ["sensor-1", "alice@example.com", "ünïcödé/名前", ""] {
            assert_eq!(Untrusted(name).to_string(), name);
        }
    }

    #[test]
    fn control_characters_cannot_start_a_line_or_move_the_cursor() {
        let forged = "x\n2024-01-01T00:00:00Z  INFO moat: admin logged in\r\u{1b}[2J\u{7f}\u{85}";
        let shown = Untrusted(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert_eq!(shown, "x\\n2024-01-01T00:00:00Z  INFO moat: admin logged in\\r\\u{1b}[2J\\u{7f}\\u{85}");
    }

    #[test]
    fn separators_overrides_and_backslashes_are_escaped() {
        assert_eq!(Untrusted("a\u{2028}b\u{202e}c\u{2066}").to_string(), "a\\u{2028}b\\u{202e}c\\u{2066}");
        // A literal backslash-n in a name is not confused with a line feed.
        assert_eq!(Untrusted("a\\nb").to_string(), "a\\\\nb");
        assert_eq!(Untrusted("\t").to_string(), "\\t");
    }
}
