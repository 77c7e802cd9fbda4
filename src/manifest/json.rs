//! The little JSON pgclone writes (--json, backup_manifest): fixed shapes, so no serializer is needed,
//! only correct string literals.

/// A JSON string literal (RFC 8259: quote, backslash and control characters escaped).
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON array of string literals.
pub fn names(items: &[&str]) -> String {
    format!("[{}]", items.iter().map(|s| string(s)).collect::<Vec<_>>().join(","))
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_escaped() {
        assert_eq!(super::string("a\"b\\c\nd ü"), "\"a\\\"b\\\\c\\u000ad ü\"");
        assert_eq!(super::names(&["sql_session", "a\"b"]), "[\"sql_session\",\"a\\\"b\"]");
        assert_eq!(super::names(&[]), "[]");
    }
}
