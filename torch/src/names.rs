//! Names read from a file (storage keys, module and class names): how long they may be, and how
//! a message shows them. Below every other module of the reader.

/// Longest storage key, module or class name a pickle may use. Torch writes keys such as `0` or
/// `140234…` and module paths of a few dozen bytes; 256 leaves room for anything real.
pub const MAX_NAME_BYTES: usize = 256;

/// Longest name shown whole in a message; a longer one is cut (a hostile 1 MiB key must not
/// make a 2 MiB error message).
const SHOWN_CHARS: usize = 80;

/// `s` as a message shows it: whole when short, else its first characters and its length.
pub fn shorten(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => std::borrow::Cow::Borrowed(s),
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}… ({} bytes)", &s[..cut], s.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn short_names_are_shown_whole_and_long_ones_cut_with_their_length() {
        assert_eq!(shorten("0"), "0");
        let exactly = "k".repeat(80);
        assert_eq!(shorten(&exactly), exactly.as_str());
        let long = "k".repeat(1 << 20);
        assert_eq!(
            shorten(&long),
            format!("{}… (1048576 bytes)", "k".repeat(80))
        );
        // Cut at a character, never inside one.
        let wide = "é".repeat(100);
        assert_eq!(shorten(&wide), format!("{}… (200 bytes)", "é".repeat(80)));
    }
}
