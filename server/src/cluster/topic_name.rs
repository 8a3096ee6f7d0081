//! The rules of topic names, the same for the metadata group, the shards and
//! the handlers.

/// Longest topic name accepted.
pub const TOPIC_NAME_BYTES_MAX: usize = 200;

/// Checks a topic name: 1 to 200 of `[A-Za-z0-9._-]`, not `.` or `..`,
/// and not starting with `__` (reserved for internal topics).
pub fn validate_topic_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic names have 1 to {TOPIC_NAME_BYTES_MAX} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err("a topic cannot be named . or ..".into());
    }
    if name.starts_with("__") {
        return Err("names starting with __ are reserved for internal topics".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("topic names use only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_topic_name("orders.v2-eu_1").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "__offsets",
            "a/b",
            "spaces no",
            &"x".repeat(201),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
