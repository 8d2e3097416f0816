//! The pre-tokenizer step (feature `jieba`): CPM's `jieba.cut(text)` ([`jieba`], HMM on in the
//! original), then what the original does to the segments before sentencepiece sees them:
//! inside a segment `" "` → `▂` (U+2582) and `"\n"` → `▃` (U+2583); the segments joined with
//! `" "`. Its output is sentencepiece's input, which the normalizer takes next.

pub mod jieba;

/// A piece of sentencepiece's input: a run of the text as it is, or one character.
pub(crate) enum Input<'a> {
    /// Part of the text, unchanged.
    Text(&'a str),
    /// A joining space, or a `▂`/`▃` in place of a space/newline.
    Char(char),
}

/// Hands sentencepiece's input for `text` to `f`, a piece at a time, in order; what is held
/// meanwhile is one jieba block's segments.
pub(crate) fn pre_tokenize<'a>(
    segmenter: &jieba::Segmenter,
    text: &'a str,
    hmm: bool,
    mut f: impl FnMut(Input<'a>),
) {
    let mut first = true;
    segmenter.cut_each(text, hmm, &mut |seg| {
        if !std::mem::take(&mut first) {
            f(Input::Char(' '));
        }
        if !seg.contains([' ', '\n']) {
            return f(Input::Text(seg));
        }
        for c in seg.chars() {
            f(Input::Char(match c {
                ' ' => '\u{2582}',
                '\n' => '\u{2583}',
                c => c,
            }));
        }
    });
}
