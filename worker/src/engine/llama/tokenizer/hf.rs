//! A Hugging Face `tokenizer.json` (safetensors model folders) through the `tokenizers` crate,
//! and the special ids such a folder declares in `config.json` and `tokenizer_config.json`.

use std::path::Path;

use super::gguf::EOG_TEXTS;
use super::{SpecialIds, Tokenizer, TokenizerError};

/// A `tokenizer.json` tokenizer, held twice: the `tokenizers` crate decides whether special
/// tokens written in text are parsed per tokenizer, not per call.
#[derive(Debug)]
pub struct HfTokenizer {
    /// Matches special added tokens in text (`<|im_start|>` is one token).
    parse: tokenizers::Tokenizer,
    /// Treats special added tokens in text as plain text.
    literal: tokenizers::Tokenizer,
}

impl HfTokenizer {
    /// Wraps `tok`.
    pub fn new(tok: tokenizers::Tokenizer) -> Self {
        let mut parse = tok;
        parse.set_encode_special_tokens(false);
        let mut literal = parse.clone();
        literal.set_encode_special_tokens(true);
        Self { parse, literal }
    }

    /// Reads `path`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let tok = tokenizers::Tokenizer::from_file(path).map_err(|source| TokenizerError::File {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(tok))
    }

    /// Tokenizes `text` without the post-processor (no BOS/EOS added).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tok = if parse_special { &self.parse } else { &self.literal };
        let enc = tok.encode(text, false).map_err(TokenizerError::Hf)?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` through the file's decoder.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.parse.decode(ids, skip_special).map_err(TokenizerError::Hf)
    }

    /// Each token's bytes as they appear in generated text, by id; `None` for special added
    /// tokens, which never do. Byte-level vocabularies (GPT-2's `Ġ` alphabet) are mapped back to
    /// bytes; SentencePiece ones (with `<0xNN>` byte tokens) read `▁` as a space.
    pub fn vocab_bytes(&self) -> Vec<Option<Vec<u8>>> {
        let added = self.parse.get_added_tokens_decoder();
        let sentencepiece = self.parse.token_to_id("<0x0A>").is_some();
        (0..self.vocab_size() as u32)
            .map(|id| {
                if let Some(a) = added.get(&id) {
                    return (!a.special).then(|| a.content.as_bytes().to_vec());
                }
                let text = self.parse.id_to_token(id)?;
                if let Some(b) = super::gguf::byte_of(&text) {
                    return Some(vec![b]);
                }
                if sentencepiece {
                    return Some(text.replace('\u{2581}', " ").into_bytes());
                }
                let mut out = Vec::new();
                super::bpe::unmap_bytes(&text, &mut out);
                Some(out)
            })
            .collect()
    }

    /// The id of a token text.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.parse.token_to_id(text)
    }

    /// The text of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.parse.id_to_token(id)
    }

    /// Number of tokens, added ones included.
    pub fn vocab_size(&self) -> usize {
        self.parse.get_vocab_size(true)
    }
}

/// Special ids of a safetensors folder: EOS from `config.json`'s `eos_token_id` (its first
/// when a list; the others also stop), else the first of `<|im_end|>`, `<|endoftext|>`, `</s>`
/// in the vocabulary; BOS from `bos_token_id` only when `tokenizer_config.json` sets
/// `add_bos_token`; plus llama.cpp's end-of-generation texts present in the vocabulary.
pub(crate) fn special_ids(
    config: &serde_json::Value,
    tok_config: Option<&serde_json::Value>,
    tok: &Tokenizer,
) -> SpecialIds {
    let eos_ids = json_ids(config.get("eos_token_id"));
    let eos = eos_ids
        .first()
        .copied()
        .or_else(|| {
            ["<|im_end|>", "<|endoftext|>", "</s>"]
                .iter()
                .find_map(|t| tok.token_to_id(t))
        })
        .unwrap_or(0);
    let mut extra_stops: Vec<u32> = Vec::new();
    let found = EOG_TEXTS.iter().filter_map(|t| tok.token_to_id(t));
    for id in eos_ids.iter().skip(1).copied().chain(found) {
        if id != eos && !extra_stops.contains(&id) {
            extra_stops.push(id);
        }
    }
    let add_bos = tok_config
        .and_then(|c| c.get("add_bos_token"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let bos = if add_bos {
        json_ids(config.get("bos_token_id")).first().copied()
    } else {
        None
    };
    SpecialIds {
        bos,
        eos,
        extra_stops,
    }
}

/// The ids of a `config.json` entry that may be a number or a list of numbers.
pub(crate) fn json_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .into_iter()
            .collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

/// A special token's text in `tokenizer_config.json`: `"eos_token": "</s>"` or
/// `"eos_token": {"content": "</s>", ...}`.
pub(crate) fn token_text(tok_config: Option<&serde_json::Value>, key: &str) -> Option<String> {
    let v = tok_config?.get(key)?;
    v.as_str()
        .or_else(|| v.get("content").and_then(|c| c.as_str()))
        .map(str::to_owned)
}

#[cfg(test)]
#[test]
fn token_text_reads_plain_and_object_entries() {
    let c = serde_json::json!({"eos_token": "<|eot_id|>", "bos_token": {"content": "<s>", "lstrip": false}, "pad_token": null});
    assert_eq!(token_text(Some(&c), "eos_token").as_deref(), Some("<|eot_id|>"));
    assert_eq!(token_text(Some(&c), "bos_token").as_deref(), Some("<s>"));
    assert_eq!(token_text(Some(&c), "pad_token"), None);
    assert_eq!(token_text(None, "eos_token"), None);
}

/// Reads a JSON file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, TokenizerError> {
    let err = |message: String| TokenizerError::Read {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))
}
