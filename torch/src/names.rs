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
