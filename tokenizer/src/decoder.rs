//! The decoder step: ids back to text. [`decode`] is sentencepiece's `decode(ids)`;
//! [`cpm_piece`] is one id's share of the original CPM decode (sentencepiece's, then every
//! space deleted, `▂` → space, `▃` → newline).

use crate::error::{Error, Result};
use crate::spm::PieceType;
use crate::spm::{Parsed, Piece};

/// The piece of `id`; an id outside the vocabulary is an error.
fn piece(m: &Parsed, id: u32) -> Result<&Piece> {
    m.pieces.get(id as usize).ok_or(Error::IdOutOfRange {
        id: id.into(),
        size: m.pieces.len(),
    })
}

/// sentencepiece's `decode(ids)`: CONTROL pieces decode to nothing, `<unk>` to the model's
/// `unk_surface`, `▁` to a space (dropped at the very start).
pub(crate) fn decode(m: &Parsed, ids: &[u32]) -> Result<String> {
    let mut out = String::new();
    let mut at_start = true;
    for &id in ids {
        let p = piece(m, id)?;
        let text = match p.kind {
            PieceType::Control => continue,
            PieceType::Unknown => m.unk_surface.clone(),
            _ => {
                let t = if at_start {
                    p.text.strip_prefix('\u{2581}').unwrap_or(&p.text)
                } else {
                    &p.text
                };
                t.replace('\u{2581}', " ")
            }
        };
        at_start &= text.is_empty();
        out.push_str(&text);
    }
    Ok(out)
}

/// Appends one id's share of the CPM decode to `out`. The original's steps (sentencepiece
/// decode, then every space deleted) make each id's share independent of its neighbours: a
/// piece's text without spaces and `▁`, `▂` → space, `▃` → newline; `<unk>` the model's
/// `unk_surface` likewise; CONTROL pieces nothing.
#[cfg(feature = "jieba")]
pub(crate) fn cpm_piece(m: &Parsed, id: u32, out: &mut String) -> Result<()> {
    let p = piece(m, id)?;
    let text = match p.kind {
        PieceType::Control => return Ok(()),
        PieceType::Unknown => &m.unk_surface,
        _ => &p.text,
    };
    out.extend(text.chars().filter_map(|c| match c {
        ' ' | '\u{2581}' => None,
        '\u{2582}' => Some(' '),
        '\u{2583}' => Some('\n'),
        c => Some(c),
    }));
    Ok(())
}
