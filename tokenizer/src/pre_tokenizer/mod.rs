//! The pre-tokenizer step (feature `jieba`): CPM's `jieba.cut(text)` ([`jieba`], HMM on in the
//! original), then what the original does to the segments before sentencepiece sees them:
//! inside a segment `" "` → `▂` (U+2582) and `"\n"` → `▃` (U+2583); the segments joined with
//! `" "`. Its output is sentencepiece's input, which the normalizer takes next.

pub mod jieba;

/// Hands sentencepiece's input for `text` to `f`, a slice at a time, in order; what is held
/// meanwhile is one jieba block's segments.
pub(crate) fn pre_tokenize<'a>(
    segmenter: &jieba::Segmenter,
    text: &'a str,
    hmm: bool,
    f: &mut dyn FnMut(&'a str),
) {
    let mut first = true;
    segmenter.cut_each(text, hmm, &mut |seg| {
        if !std::mem::take(&mut first) {
            f(" ");
        }
        if !seg.contains([' ', '\n']) {
            return f(seg);
        }
        for (i, c) in seg.char_indices() {
            f(match c {
                ' ' => "\u{2582}",
                '\n' => "\u{2583}",
                c => &seg[i..i + c.len_utf8()],
            });
        }
    });
}
