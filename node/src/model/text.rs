//! Text helpers every layer shares: cutting text for messages, quoting what a
//! target printed, and quoting for sh. Pure functions on strings.

/// Marks where text was cut.
pub const CUT_MARK: char = '…';

/// The first `max` characters of `s` (all of `s` when it is shorter).
pub fn prefix_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// The longest start of `s` of at most `max` bytes that ends on a character
/// boundary (for limits counted in bytes).
pub fn prefix_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s.get(..end).unwrap_or("")
}

/// `s` cut to at most `max` characters in all, the cut marked with [`CUT_MARK`]
/// (which counts): for receivers that limit the length of a text.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().nth(max).is_none() {
        return s.to_string();
    }
    let mut out = prefix_chars(s, max.saturating_sub(1)).to_string();
    out.push(CUT_MARK);
    out
}

/// Text from a target quoted for an error message: its first `max` characters,
/// escaped (control characters and quotes cannot garble the message) and in
/// double quotes, followed by [`CUT_MARK`] when cut.
pub fn quote_excerpt(s: &str, max: usize) -> String {
    let short = prefix_chars(s, max);
    if short.len() < s.len() {
        format!("{short:?}{CUT_MARK}")
    } else {
        format!("{short:?}")
    }
}

/// `text` with every (non-empty) secret in it replaced by `***`: for errors that
/// may echo a URL, a header or a body holding one.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s, "***");
        }
    }
    out
}

/// The start of an HTTP answer's body as one short line (200 characters, control
/// characters made spaces), for error messages.
pub fn body_snippet(body: &[u8]) -> String {
    let line: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line.trim().to_string()
}

/// Quotes `s` for POSIX sh: inside single quotes nothing is special but the
/// quote itself, written as `'\''` (close, escaped quote, reopen).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_count_characters_or_bytes_and_never_split_one() {
        assert_eq!(prefix_chars("héllo", 2), "hé");
        assert_eq!(prefix_chars("hé", 5), "hé");
        assert_eq!(prefix_chars("abc", 0), "");
        assert_eq!(prefix_bytes("héllo", 2), "h", "é is two bytes");
        assert_eq!(prefix_bytes("héllo", 3), "hé");
        assert_eq!(prefix_bytes("abc", 10), "abc");
        assert_eq!(prefix_bytes("é", 1), "");
    }

    #[test]
    fn shorten_keeps_the_mark_within_the_limit() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        assert_eq!(shorten("abcd", 4), "abcd");
        assert_eq!(shorten("ééééé", 3).chars().count(), 3);
        assert_eq!(shorten("abc", 0), "…");
    }

    #[test]
    fn excerpts_are_escaped_and_marked_when_cut() {
        assert_eq!(quote_excerpt("eth0", 10), r#""eth0""#);
        assert_eq!(quote_excerpt("abcdef", 3), r#""abc"…"#);
        assert_eq!(quote_excerpt("a\"b\nc", 10), r#""a\"b\nc""#);
        assert_eq!(quote_excerpt("\u{1b}[2J", 10), r#""\u{1b}[2J""#);
    }

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        let tricky = "a 'b' $HOME `x` \\ \"q\"";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(tricky)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), tricky);
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
