//! Incremental detokenization: turns one sequence's generated tokens into text deltas that are
//! final, never half a UTF-8 character (byte-level BPE splits characters across tokens).
//!
//! Decodes a short window of recent tokens twice — up to the last emitted token and up to the
//! newest — and emits the difference once it no longer ends in a replacement character. The
//! window starts with a few prompt tokens so decoders that treat the first token specially
//! (a leading-space strip) decode the first generated token as it reads in context.

use super::tokenizer::Tokenizer;

/// Prompt tokens kept as decoding context for the first generated tokens.
const PROMPT_CONTEXT: usize = 4;

/// The character a lossy UTF-8 decode puts where bytes are incomplete.
const REPLACEMENT: char = '\u{FFFD}';

/// One sequence's streaming detokenizer.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    tokens: Vec<u32>,
    /// Start of the decoding window.
    prefix: usize,
    /// Tokens up to here have been emitted.
    read: usize,
}

/// Decoding failed (an id outside the tokenizer's vocabulary).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("detokenizing failed: {0}")]
pub struct DetokError(pub String);

impl Detokenizer {
    /// A detokenizer whose output follows `prompt`.
    pub fn new(prompt: &[u32]) -> Self {
        let context = prompt[prompt.len().saturating_sub(PROMPT_CONTEXT)..].to_vec();
        let read = context.len();
        Self {
            tokens: context,
            prefix: 0,
            read,
        }
    }

    fn decode(&self, tok: &Tokenizer, ids: &[u32]) -> Result<String, DetokError> {
        tok.decode(ids, true).map_err(|e| DetokError(e.to_string()))
    }

    /// Adds a generated token; returns the text that became final (often empty mid-character).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, DetokError> {
        self.tokens.push(id);
        self.delta(tok, false)
    }

    /// Returns whatever is still held back (the sequence ended). An incomplete character at the
    /// very end comes out as U+FFFD.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String, DetokError> {
        self.delta(tok, true)
    }

    fn delta(&mut self, tok: &Tokenizer, force: bool) -> Result<String, DetokError> {
        if self.read == self.tokens.len() {
            return Ok(String::new());
        }
        let before = self.decode(tok, &self.tokens[self.prefix..self.read])?;
        let after = self.decode(tok, &self.tokens[self.prefix..])?;
        if !force && (after.len() <= before.len() || after.ends_with(REPLACEMENT)) {
            return Ok(String::new());
        }
        let delta = match after.strip_prefix(before.as_str()) {
            Some(d) => d.to_string(),
            // The decoder rewrote earlier text (rare): emit only what is past the old length.
            None => after
                .char_indices()
                .find(|&(i, _)| i >= before.len())
                .map(|(i, _)| after[i..].to_string())
                .unwrap_or_default(),
        };
        self.prefix = self.read;
        self.read = self.tokens.len();
        // Drop tokens no longer needed as context.
        if self.prefix > 64 {
            self.tokens.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
        }
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::decoders::byte_level::ByteLevel;
    use tokenizers::models::bpe::{Vocab, BPE};

    /// A byte-level tokenizer whose ids are the 256 byte symbols, no merges.
    fn byte_tokenizer() -> Tokenizer {
        let vocab: Vocab = ByteLevel::alphabet()
            .into_iter()
            .map(|c| c.to_string())
            .enumerate()
            .map(|(i, s)| (s, i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .expect("bpe");
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevel::default()));
        Tokenizer::from(tok)
    }

    #[test]
    fn multibyte_character_is_emitted_whole_once_complete() {
        let tok = byte_tokenizer();
        let ids = tok.encode("aé日", false).expect("encode");
        assert_eq!(ids.len(), 1 + 2 + 3);
        let mut d = Detokenizer::new(&[]);
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| d.push(&tok, i).expect("push"))
            .collect();
        assert_eq!(pieces, vec!["a", "", "é", "", "", "日"]);
        assert_eq!(d.flush(&tok).expect("flush"), "");
    }

    #[test]
    fn long_generation_concatenates_to_the_full_decode() {
        let tok = byte_tokenizer();
        let text = "Grüße, 世界! ".repeat(20);
        let ids = tok.encode(text.as_str(), false).expect("encode");
        let mut d = Detokenizer::new(&ids[..2]);
        let mut out = String::new();
        for &i in &ids[2..] {
            out.push_str(&d.push(&tok, i).expect("push"));
        }
        out.push_str(&d.flush(&tok).expect("flush"));
        assert_eq!(out, tok.decode(&ids[2..], false).expect("decode"));
    }

    #[test]
    fn cut_character_is_flushed_as_a_replacement() {
        let tok = byte_tokenizer();
        let ids = tok.encode("日", false).expect("encode");
        let mut d = Detokenizer::new(&[]);
        assert_eq!(d.push(&tok, ids[0]).expect("push"), "");
        assert_eq!(d.flush(&tok).expect("flush"), "\u{FFFD}");
    }
}
