//! Log-probs read from a logits row: a target token's, and the most likely tokens' (what jobs
//! ask for with `logprobs` and `prompt_logprobs`, and what score jobs record).

use genq_shared::result::{TokenLogprob, TopLogprob};

use super::tokenizer::Tokenizer;

/// The log-softmax of one row, in f64: `logit - max - ln(sum(exp(logit - max)))`.
struct LogSoftmax {
    max: f64,
    log_sum: f64,
}

impl LogSoftmax {
    fn of(row: &[f32]) -> LogSoftmax {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
        LogSoftmax { max, log_sum: sum.ln() }
    }

    fn at(&self, row: &[f32], id: u32) -> f64 {
        row.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY) as f64 - self.max - self.log_sum
    }
}

/// `log p(target)` under one row of logits.
pub(crate) fn log_prob(row: &[f32], target: u32) -> f64 {
    LogSoftmax::of(row).at(row, target)
}

/// The `k` most likely token ids of a row, most likely first; equal logits keep the lower id
/// first, and NaN logits are never chosen.
fn top_ids(row: &[f32], k: usize) -> Vec<u32> {
    let mut top: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return Vec::new();
    }
    for (i, &l) in row.iter().enumerate() {
        if l.is_nan() || (top.len() == k && l <= top[k - 1].0) {
            continue;
        }
        let at = top.partition_point(|&(v, _)| v >= l);
        top.insert(at, (l, i as u32));
        top.truncate(k);
    }
    top.into_iter().map(|(_, i)| i).collect()
}

/// Tokens' texts as they read inside running text. Decoding a token alone loses what a decoder
/// drops at the start of a text (SentencePiece's leading space), so each is decoded after an
/// anchor token and the anchor's text cut off.
pub(crate) struct TokenTexts {
    /// A one-token text (`a`) and what it decodes to.
    anchor: Option<(u32, String)>,
}

impl TokenTexts {
    /// The anchor of `tokenizer`, if `a` is one token in it.
    pub(crate) fn new(tokenizer: &Tokenizer) -> TokenTexts {
        let anchor = tokenizer
            .encode("a", false)
            .ok()
            .filter(|ids| ids.len() == 1)
            .and_then(|ids| Some((ids[0], tokenizer.decode(&ids, false).ok()?)));
        TokenTexts { anchor }
    }

    /// Token `id`'s text.
    pub(crate) fn text(&self, tokenizer: &Tokenizer, id: u32) -> String {
        if let Some((anchor, anchor_text)) = &self.anchor {
            if let Some(rest) = tokenizer.decode(&[*anchor, id], false).ok().and_then(|t| t.strip_prefix(anchor_text.as_str()).map(str::to_string)) {
                return rest;
            }
        }
        tokenizer.decode(&[id], false).unwrap_or_default()
    }
}

/// `target`'s entry: its log-prob under `row` (`None` without a row: a prompt's first token) and
/// the `k` most likely tokens of the row.
pub(crate) fn token_logprob(tokenizer: &Tokenizer, texts: &TokenTexts, row: Option<&[f32]>, target: u32, k: usize) -> TokenLogprob {
    let text = |id: u32| texts.text(tokenizer, id);
    let Some(row) = row else {
        return TokenLogprob { id: target, token: text(target), logprob: None, top: Vec::new() };
    };
    let norm = LogSoftmax::of(row);
    let top = top_ids(row, k).into_iter().map(|id| TopLogprob { id, token: text(id), logprob: norm.at(row, id) }).collect();
    TokenLogprob { id: target, token: text(target), logprob: Some(norm.at(row, target)), top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_tokens_keep_their_leading_space() {
        let src = crate::engine::llama::llamacpp_src::dir().unwrap_or_else(|e| panic!("{e}"));
        let mut file = std::fs::File::open(src.join("models/ggml-vocab-llama-spm.gguf")).expect("llama.cpp's SentencePiece vocabulary");
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("gguf");
        let tok = crate::engine::llama::tokenizer::tokenizer_from_gguf(&content).expect("tokenizer");
        let texts = TokenTexts::new(&tok);
        let ids = tok.encode("Hello world, how are you?", false).expect("encode");
        let joined: String = ids.iter().map(|&id| texts.text(&tok, id)).collect();
        assert_eq!(joined, " Hello world, how are you?", "every word but the first keeps its space, and so does the first");
        let alone: String = ids.iter().map(|&id| tok.decode(&[id], false).unwrap_or_default()).collect();
        assert_ne!(alone, joined, "decoding alone drops the spaces this fixes");
    }

    #[test]
    fn the_most_likely_come_first_and_ties_keep_the_lower_id() {
        let row = [0.5, 2.0, f32::NAN, 2.0, -1.0, 3.0];
        assert_eq!(top_ids(&row, 3), vec![5, 1, 3]);
        assert_eq!(top_ids(&row, 10), vec![5, 1, 3, 0, 4]);
        assert!(top_ids(&row, 0).is_empty());
    }

    #[test]
    fn log_probs_are_a_normalised_distribution() {
        let row = [1.0f32, 2.0, 3.0, -4.0];
        let total: f64 = (0..4).map(|i| log_prob(&row, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        let expected = 3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp() + (-4f64).exp()).ln();
        assert!((log_prob(&row, 2) - expected).abs() < 1e-12);
    }
}
