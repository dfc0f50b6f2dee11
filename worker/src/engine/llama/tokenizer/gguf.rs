//! The tokenizer stored in a GGUF file's metadata, read and run as llama.cpp does
//! (`llama-vocab.cpp`): the vocabulary with scores and attributes, the special tokens matched
//! whole before anything else ([`special`](super::special)), then SentencePiece
//! ([`spm`](super::spm)) or byte-level BPE ([`bpe`](super::bpe)) on the text between them;
//! decoding token by token into bytes. Which ids are BOS and end generation is
//! [`GgufTokenizer::special_ids`].

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};

use super::bpe::{Bpe, PreTokenizer};
use super::special::{partition, Fragment};
use super::{spm, SpecialIds, TokenizerError};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_NAME: &str = "general.name";

/// Token attributes, llama.cpp's `llama_token_attr` bits (only those used here).
pub(super) mod attr {
    /// `<unk>`: matched whole like a control token.
    pub(crate) const UNKNOWN: u32 = 1 << 0;
    /// A plain vocabulary entry.
    pub(crate) const NORMAL: u32 = 1 << 2;
    /// `<s>`, `<|im_end|>`: matched in text only when special tokens are parsed; skippable.
    pub(crate) const CONTROL: u32 = 1 << 3;
    /// Matched whole in text even when special tokens are not parsed; always decoded.
    pub(crate) const USER_DEFINED: u32 = 1 << 4;
    /// `<0x0A>`: one byte (SentencePiece byte fallback).
    pub(crate) const BYTE: u32 = 1 << 5;
    /// Whitespace before the token is dropped when it is matched in text.
    pub(crate) const LSTRIP: u32 = 1 << 7;
    /// Whitespace after the token is dropped when it is matched in text.
    pub(crate) const RSTRIP: u32 = 1 << 8;
}

/// The end-of-generation token texts llama.cpp recognises in any vocabulary (its
/// `special_eog_ids`); found ones are also made control tokens, as llama.cpp does.
pub(super) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle pad, repository and file-separator tokens: llama.cpp ends generation on
/// these too (one text per kind is recognised, the first found).
const FIM_EOG_TEXTS: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
    &["<|file_sep|>"],
];

/// One vocabulary entry.
#[derive(Debug, Clone)]
pub(super) struct Token {
    pub text: String,
    pub score: f32,
    pub attr: u32,
}

/// How text between special tokens becomes ids.
#[derive(Debug)]
enum Model {
    /// `tokenizer.ggml.model = "llama"`: SentencePiece with byte fallback.
    Spm,
    /// `tokenizer.ggml.model = "gpt2"`: byte-level BPE after a pre-tokenizer.
    Bpe(Bpe),
}

/// A GGUF tokenizer: llama.cpp's `llama_vocab` for the SentencePiece and byte-level BPE types.
#[derive(Debug)]
pub struct GgufTokenizer {
    tokens: Vec<Token>,
    ids: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest first: the order llama.cpp matches
    /// them in text.
    specials: Vec<u32>,
    model: Model,
    /// SentencePiece: a space is put before the text at the start and after every special
    /// token, and one leading space is dropped when decoding.
    add_space_prefix: bool,
    unk: Option<u32>,
    special_ids: SpecialIds,
    /// Whether BOS is prepended (kept apart from `special_ids.bos` for decoding's rule).
    add_bos: bool,
}

impl GgufTokenizer {
    /// Reads the tokenizer from `content`'s metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, TokenizerError> {
        let model_name = string(content, KEY_MODEL)?;
        let mut bpe_pre = None;
        let (default_bos, default_eos, default_unk) = match model_name.as_str() {
            "llama" => (Some(1), Some(2), Some(0)),
            "gpt2" => {
                let pre_name = match content.metadata.get(KEY_PRE) {
                    Some(v) => v
                        .to_string()
                        .map_err(|_| bad(KEY_PRE, "is not a string"))?
                        .as_str(),
                    None => "default",
                };
                let pre = PreTokenizer::named(pre_name).ok_or_else(|| {
                    TokenizerError::UnsupportedPreTokenizer(pre_name.to_owned())
                })?;
                let bos = if pre.no_bos { None } else { Some(11) };
                bpe_pre = Some(pre);
                (bos, Some(11), None)
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };

        let mut tokens = read_tokens(content)?;
        let n = tokens.len();
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // A text listed twice maps to its last id, as in llama.cpp's `token_to_id`.
            ids.insert(t.text.clone(), id_u32(i)?);
        }

        let key_id = |key: &str, default: Option<u32>| -> Option<u32> {
            let default = default.filter(|&d| (d as usize) < n);
            match content.metadata.get(key).and_then(integer) {
                Some(v) => u32::try_from(v).ok().filter(|&v| (v as usize) < n).or(default),
                None => default,
            }
        };
        let bos = key_id(KEY_BOS, default_bos);
        let eos = key_id(KEY_EOS, default_eos);
        let unk = key_id(KEY_UNK, default_unk);
        let eot = key_id(KEY_EOT, None);
        let eom = key_id(KEY_EOM, None);

        // llama.cpp's end-of-generation set, found by text; those tokens become control tokens.
        let mut eog: Vec<u32> = Vec::new();
        let mut add_eog = |id: u32, tokens: &mut Vec<Token>| {
            tokens[id as usize].attr |= attr::CONTROL;
            if !eog.contains(&id) {
                eog.push(id);
            }
        };
        for kind in FIM_EOG_TEXTS {
            if let Some(&id) = kind.iter().find_map(|t| ids.get(*t)) {
                add_eog(id, &mut tokens);
            }
        }
        for text in EOG_TEXTS {
            if let Some(&id) = ids.get(*text) {
                add_eog(id, &mut tokens);
            }
        }
        // gpt-oss ends a message with <|end|> but keeps generating (<|return|>, <|call|> end it).
        let has = |t: &str| ids.get(t).is_some_and(|id| eog.contains(id));
        if (has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>")) {
            if let Some(&end) = ids.get("<|end|>") {
                eog.retain(|&id| id != end);
                tokens[end as usize].attr = attr::USER_DEFINED;
            }
        }
        for id in [eos, eot, eom].into_iter().flatten() {
            if !eog.contains(&id) {
                eog.push(id);
            }
        }

        let mut specials: Vec<u32> = (0..n)
            .filter(|&i| {
                tokens[i].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .map(|i| i as u32)
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].text.len()));

        // Phi-3's special tokens swallow the whitespace after them (llama.cpp keys this on
        // the model name).
        let name = content
            .metadata
            .get(KEY_NAME)
            .and_then(|v| v.to_string().ok())
            .map(|s| s.to_lowercase())
            .unwrap_or_default();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &specials {
                tokens[id as usize].attr |= attr::RSTRIP;
            }
            if let Some(&id) = ids.get("</s>") {
                tokens[id as usize].attr |= attr::RSTRIP;
            }
            for text in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = ids.get(text) {
                    tokens[id as usize].attr &= !attr::RSTRIP;
                }
            }
        }

        let (model, add_bos_default, add_space_prefix_default) = match bpe_pre {
            None => (Model::Spm, true, true),
            Some(pre) => {
                let add_bos = pre.add_bos;
                (Model::Bpe(Bpe::new(content, pre)?), add_bos, false)
            }
        };
        let flag = |key: &'static str, default: bool| -> Result<bool, TokenizerError> {
            match content.metadata.get(key) {
                Some(v) => v.to_bool().map_err(|_| bad(key, "is not a boolean")),
                None => Ok(default),
            }
        };
        let add_bos = flag(KEY_ADD_BOS, add_bos_default)?;
        let add_space_prefix = flag(KEY_ADD_PREFIX, add_space_prefix_default)?;

        // EOS is required by the engine; a vocabulary without one stops on its EOG set only.
        let eos = eos.or_else(|| eog.first().copied()).unwrap_or(0);
        let extra_stops = eog.into_iter().filter(|&id| id != eos).collect();
        Ok(Self {
            tokens,
            ids,
            specials,
            model,
            add_space_prefix,
            unk,
            special_ids: SpecialIds {
                bos: if add_bos { bos } else { None },
                eos,
                extra_stops,
            },
            add_bos,
        })
    }

    /// BOS (when this vocabulary adds it), EOS and the other end-of-generation ids.
    pub fn special_ids(&self) -> SpecialIds {
        self.special_ids.clone()
    }

    /// Tokenizes `text` without BOS; special tokens written in it are matched only when
    /// `parse_special` (user-defined tokens always are, as in llama.cpp).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        let fragments = partition(text, &self.tokens, &self.specials, parse_special);
        // SentencePiece puts a space before the first text and any text after a special token.
        let mut after_special = true;
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(text) => {
                    match &self.model {
                        Model::Spm => {
                            let prefix = self.add_space_prefix && after_special;
                            spm::encode(self, text, prefix, &mut out);
                        }
                        Model::Bpe(bpe) => bpe.encode(&self.ids, text, &mut out)?,
                    }
                    after_special = false;
                }
            }
        }
        Ok(out)
    }

    /// Decodes `ids` as llama.cpp's `detokenize` does (without its `clean_spaces` pass): each
    /// token's piece, control and unknown tokens left out when `skip_special`, SentencePiece's
    /// leading space dropped once. Invalid UTF-8 (a character cut between tokens) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut ids = ids;
        let mut strip_space = self.add_space_prefix;
        if skip_special && self.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), self.special_ids.bos) {
                if first == bos {
                    strip_space = false;
                    ids = &ids[1..];
                }
            }
        }
        let mut bytes = Vec::new();
        for &id in ids {
            let start = bytes.len();
            self.piece(id, skip_special, &mut bytes)?;
            if strip_space && bytes.get(start) == Some(&b' ') {
                bytes.remove(start);
            }
            strip_space = false;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Appends token `id`'s bytes (llama.cpp's `token_to_piece`).
    fn piece(&self, id: u32, skip_special: bool, out: &mut Vec<u8>) -> Result<(), TokenizerError> {
        let token = self
            .tokens
            .get(id as usize)
            .ok_or(TokenizerError::UnknownId(id))?;
        let a = token.attr;
        if a & (attr::UNKNOWN | attr::CONTROL) != 0 {
            if !skip_special {
                out.extend_from_slice(token.text.as_bytes());
            }
        } else if a & attr::USER_DEFINED != 0 {
            out.extend_from_slice(token.text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match &self.model {
                Model::Spm => out.extend_from_slice(token.text.replace('▁', " ").as_bytes()),
                Model::Bpe(_) => super::bpe::unmap_bytes(&token.text, out),
            }
        } else if a & attr::BYTE != 0 {
            if let Some(b) = byte_of(&token.text) {
                out.push(b);
            }
        }
        Ok(())
    }

    /// Token `id`'s bytes as they appear in generated text; `None` for control and unknown
    /// tokens, which never do.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let token = self.tokens.get(id as usize)?;
        if token.attr & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return None;
        }
        let mut out = Vec::new();
        self.piece(id, false, &mut out).ok()?;
        Some(out)
    }

    /// The id of a token text.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The text of a token id, as stored in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokens.get(id as usize).map(|t| t.text.clone())
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The token at `id` (SentencePiece reads scores).
    pub(super) fn token(&self, id: u32) -> &Token {
        &self.tokens[id as usize]
    }

    /// Id of a piece of text, if it is a token.
    pub(super) fn lookup(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The token for one raw byte: `<0xXX>`, else the byte as text, else `<unk>` (llama.cpp's
    /// `byte_to_token` throws there).
    pub(super) fn byte_token(&self, byte: u8) -> Option<u32> {
        self.lookup(&format!("<0x{byte:02X}>"))
            .or_else(|| std::str::from_utf8(&[byte]).ok().and_then(|s| self.lookup(s)))
            .or(self.unk)
    }
}

/// `<0xXX>` -> the byte.
pub(super) fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// Token texts, scores and attributes. Missing scores are 0; missing types make every token
/// normal (nothing is then matched whole in text).
fn read_tokens(content: &Content) -> Result<Vec<Token>, TokenizerError> {
    let texts = array(content, KEY_TOKENS)?;
    let n = texts.len();
    let scores = match content.metadata.get(KEY_SCORES) {
        Some(v) => {
            let scores = v
                .to_vec()
                .map_err(|_| bad(KEY_SCORES, "is not an array"))?
                .iter()
                .map(|v| match v {
                    Value::F32(f) => Some(*f),
                    other => integer(other).map(|i| i as f32),
                })
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| bad(KEY_SCORES, "holds a non-number"))?;
            if scores.len() < n {
                return Err(bad(KEY_SCORES, &format!("has {} entries for {n} tokens", scores.len())));
            }
            Some(scores)
        }
        None => None,
    };
    let types = match content.metadata.get(KEY_TOKEN_TYPE) {
        Some(v) => {
            let types = v
                .to_vec()
                .map_err(|_| bad(KEY_TOKEN_TYPE, "is not an array"))?
                .iter()
                .map(integer)
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| bad(KEY_TOKEN_TYPE, "holds a non-integer"))?;
            if types.len() < n {
                return Err(bad(
                    KEY_TOKEN_TYPE,
                    &format!("has {} entries for {n} tokens", types.len()),
                ));
            }
            Some(types)
        }
        None => None,
    };
    texts
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut text = v
                .to_string()
                .map_err(|_| bad(KEY_TOKENS, "holds a non-string"))?
                .clone();
            if text.is_empty() {
                text = format!("[EMPTY_{i}]");
            }
            let attr = match types.as_ref().map(|t| t[i]) {
                None | Some(1) => attr::NORMAL,
                Some(2) => attr::UNKNOWN,
                Some(3) => attr::CONTROL,
                Some(4) => attr::USER_DEFINED,
                Some(6) => attr::BYTE,
                // Unused (5) and undefined tokens: never matched, decoded to nothing.
                Some(_) => 0,
            };
            Ok(Token {
                text,
                score: scores.as_ref().map_or(0.0, |s| s[i]),
                attr,
            })
        })
        .collect()
}

fn id_u32(i: usize) -> Result<u32, TokenizerError> {
    u32::try_from(i).map_err(|_| bad(KEY_TOKENS, "holds more than u32::MAX tokens"))
}

pub(super) fn bad(key: &'static str, message: &str) -> TokenizerError {
    TokenizerError::BadValue {
        key,
        message: message.to_owned(),
    }
}

fn string<'a>(content: &'a Content, key: &'static str) -> Result<&'a String, TokenizerError> {
    content
        .metadata
        .get(key)
        .ok_or(TokenizerError::MissingKey(key))?
        .to_string()
        .map_err(|_| bad(key, "is not a string"))
}

pub(super) fn array<'a>(
    content: &'a Content,
    key: &'static str,
) -> Result<&'a Vec<Value>, TokenizerError> {
    content
        .metadata
        .get(key)
        .ok_or(TokenizerError::MissingKey(key))?
        .to_vec()
        .map_err(|_| bad(key, "is not an array"))
}

/// Any GGUF integer type as `i64` (writers differ: ids are `u32`, token types `i32`).
fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

/// Merges key, for [`super::bpe`].
pub(super) const MERGES_KEY: &str = KEY_MERGES;
