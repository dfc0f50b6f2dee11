//! Special tokens matched whole in text before the model's own splitting (llama.cpp's
//! `tokenizer_st_partition`): each control, user-defined or unknown token, longest first, cuts
//! every remaining text fragment where it occurs. Control and unknown tokens count only when
//! special tokens are parsed; user-defined ones always do.

use super::gguf::{attr, Token};

/// A piece of the input: text still to tokenize, or a token already found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// Splits `text` at the special tokens `specials` (ids into `tokens`, longest first).
pub(super) fn partition<'a>(
    text: &'a str,
    tokens: &[Token],
    specials: &[u32],
    parse_special: bool,
) -> Vec<Fragment<'a>> {
    let mut fragments = Vec::new();
    if !text.is_empty() {
        fragments.push(Fragment::Text(text));
    }
    for &id in specials {
        let token = &tokens[id as usize];
        if !parse_special && token.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let needle = token.text.as_str();
        if !fragments
            .iter()
            .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)))
        {
            continue;
        }
        let mut next = Vec::with_capacity(fragments.len() + 2);
        for fragment in fragments {
            let Fragment::Text(mut rest) = fragment else {
                next.push(fragment);
                continue;
            };
            while let Some(at) = rest.find(needle) {
                let mut left = &rest[..at];
                if token.attr & attr::LSTRIP != 0 {
                    left = left.trim_end_matches(is_c_space);
                }
                if !left.is_empty() {
                    next.push(Fragment::Text(left));
                }
                next.push(Fragment::Token(id));
                rest = &rest[at + needle.len()..];
                if token.attr & attr::RSTRIP != 0 {
                    rest = rest.trim_start_matches(is_c_space);
                }
            }
            if !rest.is_empty() {
                next.push(Fragment::Text(rest));
            }
        }
        fragments = next;
    }
    fragments
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for the strip attributes.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r')
}
