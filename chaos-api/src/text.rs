//! Text that came from a peer (a process name, a request path, a name it sent), made safe to
//! print on one line of a log or a terminal.

/// Appended to what [`escape`] cut short.
const ELLIPSIS: &str = "…";

/// `text` with control characters and invisible reordering marks as visible escapes (`\n`,
/// `\x1b`, `\u{202e}`), cut to at most `max` bytes with an ellipsis. Backslashes are left as
/// they are, so escaping twice changes nothing.
pub fn escape(text: &str, max: usize) -> String {
    escape_chunks([(text, &[][..])], max)
}

/// As [`escape`], for bytes that may not be UTF-8: invalid bytes become `\xNN`.
pub fn escape_bytes(bytes: &[u8], max: usize) -> String {
    escape_chunks(bytes.utf8_chunks().map(|c| (c.valid(), c.invalid())), max)
}

fn escape_chunks<'a>(chunks: impl IntoIterator<Item = (&'a str, &'a [u8])>, max: usize) -> String {
    let mut out = Bounded { text: String::new(), max, cut: None };
    let mut piece = String::new();
    for (valid, invalid) in chunks {
        for c in valid.chars() {
            piece.clear();
            push_char(&mut piece, c);
            if !out.push(&piece) {
                return out.text;
            }
        }
        for b in invalid {
            if !out.push(&format!("\\x{b:02x}")) {
                return out.text;
            }
        }
    }
    out.text
}

/// A string that takes whole pieces while they fit in `max` bytes, then ends with an ellipsis.
struct Bounded {
    text: String,
    max: usize,
    /// Where to cut once a piece does not fit: the last length that left room for the ellipsis.
    cut: Option<usize>,
}

impl Bounded {
    /// False once full (cut and ended with the ellipsis).
    fn push(&mut self, piece: &str) -> bool {
        if self.cut.is_none() && self.text.len() + piece.len() > self.max.saturating_sub(ELLIPSIS.len()) {
            self.cut = Some(self.text.len());
        }
        if self.text.len() + piece.len() > self.max {
            self.text.truncate(self.cut.unwrap_or(0));
            self.text.push_str(ELLIPSIS);
            return false;
        }
        self.text.push_str(piece);
        true
    }
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
        // Line and paragraph separators, and the marks that reorder text (bidi overrides and
        // isolates), which make a line read other than it is.
        '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
            out.push_str(&format!("\\u{{{:x}}}", c as u32))
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("chaosctl", 64), "chaosctl");
        assert_eq!(escape("x\nINFO audit: ok", 64), "x\\nINFO audit: ok");
        assert_eq!(escape("\x1b[2J\r\t\x7f\u{9b}", 64), "\\x1b[2J\\r\\t\\x7f\\x9b");
        assert_eq!(escape("a\u{202e}b", 64), "a\\u{202e}b");
        assert_eq!(escape("é ✓ back\\slash", 64), "é ✓ back\\slash");
        assert_eq!(escape_bytes(b"ok\xff\xc3\n", 64), "ok\\xff\\xc3\\n");
        // Idempotent: what is escaped stays as it is.
        let once = escape("x\n\x1b", 64);
        assert_eq!(escape(&once, 64), once);
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        assert_eq!(escape(&"a".repeat(10), 10), "a".repeat(10));
        assert_eq!(escape(&"a".repeat(11), 10), format!("{}…", "a".repeat(7)));
        // Never in the middle of an escape or a character.
        let cut = escape(&"\n".repeat(100), 10);
        assert_eq!(cut, "\\n\\n\\n…");
        let cut = escape(&"é".repeat(100), 10);
        assert!(cut.len() <= 10 && cut.ends_with('…'), "{cut}");
        assert!(escape(&"\x1b".repeat(60_000), 128).len() <= 128);
    }
}
