//! SentencePiece encoding as llama.cpp does it (`llm_tokenizer_spm_session`): spaces become
//! `▁`, the text starts as one symbol per character, and the adjacent pair whose concatenation
//! is the highest-scoring vocabulary token is merged first (the leftmost on a tie) until no
//! pair is a token. A symbol that is not a token is written as its bytes' `<0xXX>` tokens.
//!
//! llama.cpp resegments such a symbol through the merges that made it, but every merged
//! symbol is a token by construction, so only single characters ever reach the byte fallback.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::gguf::GgufTokenizer;

/// A run of the text: `text[start..start + len]`; `len == 0` once merged into its left.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbols `left` and `left`'s next.
#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Combined length when queued: a merge since then makes the entry stale.
    len: usize,
}

impl Ord for Bigram {
    /// Highest score first, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// Appends the ids of `text` (a fragment between special tokens) to `out`; `prefix_space`
/// puts a space before it first.
pub(super) fn encode(vocab: &GgufTokenizer, text: &str, prefix_space: bool, out: &mut Vec<u32>) {
    let mut escaped = String::with_capacity(text.len() + 3);
    if prefix_space {
        escaped.push('▁');
    }
    escaped.push_str(&text.replace(' ', "▁"));
    let text = escaped.as_str();

    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let i = symbols.len();
        symbols.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: (start + c.len_utf8() < text.len()).then_some(i + 1),
        });
    }

    let mut queue = BinaryHeap::new();
    let try_add = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r) = (symbols[left], symbols[right]);
        let piece = &text[l.start..r.start + r.len];
        if let Some(id) = vocab.lookup(piece) {
            queue.push(Bigram {
                score: vocab.token(id).score,
                left,
                right,
                len: piece.len(),
            });
        }
    };
    for i in 1..symbols.len() {
        try_add(&mut queue, &symbols, Some(i - 1), Some(i));
    }

    while let Some(bigram) = queue.pop() {
        let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.len {
            continue;
        }
        symbols[bigram.left].len += r.len;
        symbols[bigram.right].len = 0;
        symbols[bigram.left].next = r.next;
        if let Some(next) = r.next {
            symbols[next].prev = Some(bigram.left);
        }
        let left = symbols[bigram.left];
        try_add(&mut queue, &symbols, left.prev, Some(bigram.left));
        try_add(&mut queue, &symbols, Some(bigram.left), left.next);
    }

    let mut at = (!symbols.is_empty()).then_some(0);
    while let Some(i) = at {
        let s = symbols[i];
        let piece = &text[s.start..s.start + s.len];
        match vocab.lookup(piece) {
            Some(id) => out.push(id),
            None => out.extend(piece.bytes().filter_map(|b| vocab.byte_token(b))),
        }
        at = s.next;
    }
}
