//! Client input inside diagnostic text, made safe to log.
//!
//! Decoding errors quote the value they could not use (`invalid type: string
//! "…", expected struct AuthDetails`), and a client that puts a token in the wrong
//! field would have it written to the log. Logs never carry a token or a key
//! secret, so anything quoted is cut out before a message is logged; the client
//! itself still gets the full message.

/// `text` with every `"…"` and `` `…` `` span emptied to `"…"`. An unclosed quote
/// runs to the end of the text.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' && c != '`' {
            out.push(c);
            continue;
        }
        skip_quoted(&mut chars, c);
        out.push_str("\"…\"");
    }
    out
}

/// Consumes up to and including the quote that closes one opened by `quote`.
fn skip_quoted(chars: &mut std::str::Chars<'_>, quote: char) {
    while let Some(c) = chars.next() {
        if c == '\\' {
            chars.next();
        } else if c == quote {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_cut_out_and_the_rest_kept() {
        let text = r#"invalid type: string "st1.abc.def", expected struct AuthDetails at line 1"#;
        assert_eq!(
            quoted(text),
            r#"invalid type: string "…", expected struct AuthDetails at line 1"#
        );
        assert_eq!(
            quoted("unknown variant `sekrit`, expected"),
            r#"unknown variant "…", expected"#
        );
    }

    #[test]
    fn escaped_and_unclosed_quotes_hide_everything_inside() {
        assert_eq!(quoted(r#"a "x\"secret" b"#), r#"a "…" b"#);
        assert_eq!(quoted(r#"a "secret to the end"#), r#"a "…""#);
        assert_eq!(quoted("no quotes here"), "no quotes here");
    }
}
