//! Tokenizers for Llama-family models, and the special token ids (BOS, EOS, other
//! end-of-generation tokens) that generation needs.
//!
//! - [`gguf`]: the tokenizer stored in a GGUF file, exactly as llama.cpp runs it:
//!   SentencePiece ([`spm`], `tokenizer.ggml.model = "llama"`: Llama 2, Mistral, Phi-3) or
//!   byte-level BPE ([`bpe`], `"gpt2"`: Llama 3, Qwen2/3.5, GPT-2, StarCoder, SmolLM, ...),
//!   after special tokens are matched whole ([`special`]).
//! - [`hf`]: a Hugging Face `tokenizer.json` next to safetensors weights, through the
//!   `tokenizers` crate, with the special ids from `config.json` / `tokenizer_config.json`.
//!
//! A tokenizer model or pre-tokenizer llama.cpp's rules are not implemented for is refused,
//! naming the known ones, rather than tokenized subtly wrong. Chat templates live in
//! [`super::chat`]; streaming detokenisation in [`super::detok`].

mod bpe;
pub(crate) mod gguf;
pub(crate) mod hf;
mod special;
mod spm;
#[cfg(test)]
pub(crate) mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;

use self::gguf::GgufTokenizer;
use self::hf::HfTokenizer;

/// Why a tokenizer could not be built, or text not tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key the tokenizer needs is absent from the GGUF.
    #[error("GGUF metadata `{0}` is missing")]
    MissingKey(&'static str),
    /// A metadata key has the wrong type or an unusable value.
    #[error("GGUF metadata `{key}` {message}")]
    BadValue {
        /// The key at fault.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer family this module does not build.
    #[error("GGUF tokenizer model `{0}` is not supported (known: llama (SentencePiece), gpt2 (byte-level BPE))")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer whose splitting rules are not implemented.
    #[error("GGUF pre-tokenizer `{0}` is not supported (known: {known})", known = bpe::PreTokenizer::known_names().join(", "))]
    UnsupportedPreTokenizer(String),
    /// A pre-tokenizer regex failed to compile or to run.
    #[error("pre-tokenizer regex `{pattern}`: {message}")]
    Regex {
        /// The regex.
        pattern: String,
        /// The `fancy-regex` error.
        message: String,
    },
    /// An id to decode is outside the vocabulary.
    #[error("token id {0} is outside the vocabulary")]
    UnknownId(u32),
    /// The `tokenizers` crate refused to encode or decode.
    #[error("{0}")]
    Hf(#[source] tokenizers::Error),
    /// A `tokenizer.json` could not be read or parsed.
    #[error("reading tokenizer `{}`: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: tokenizers::Error,
    },
    /// A model file or folder could not be read.
    #[error("reading `{}`: {message}", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Token ids that shape generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialIds {
    /// The token to prepend to every prompt, when the vocabulary adds one: llama.cpp's rule
    /// (`tokenizer.ggml.add_bos_token`, else the default of the tokenizer type: SentencePiece
    /// and Llama 3's BPE add BOS, Qwen2 and GPT-2 do not; SmolLM2 sets it false: its BOS id 1
    /// is `<|im_start|>`, which the chat template writes itself).
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id` (SmolLM2: 2, `<|im_end|>`).
    pub eos: u32,
    /// Other tokens that end generation, llama.cpp's end-of-generation set: EOT/EOM ids and
    /// the end-of-turn texts it knows (`<|im_end|>`, `<|eot_id|>`, `<|end|>`, `<|endoftext|>`,
    /// `<end_of_turn>`, `</s>`, fill-in-the-middle pad/repo/file separators, ...) present in
    /// the vocabulary, without `eos` itself and without duplicates.
    pub extra_stops: Vec<u32>,
}

impl SpecialIds {
    /// Whether generating `id` ends the sequence.
    pub fn is_stop(&self, id: u32) -> bool {
        id == self.eos || self.extra_stops.contains(&id)
    }
}

/// A model's tokenizer: a GGUF file's own, or a `tokenizer.json`.
#[derive(Debug)]
pub enum Tokenizer {
    /// From GGUF metadata, run as llama.cpp does.
    Gguf(Box<GgufTokenizer>),
    /// From a Hugging Face `tokenizer.json`.
    Hf(Box<HfTokenizer>),
}

impl Tokenizer {
    /// Tokenizes `text` without adding BOS (see [`prompt_ids`]); special tokens written in the
    /// text (`<|im_start|>`) become their ids only when `parse_special`.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        match self {
            Self::Gguf(t) => t.encode(text, parse_special),
            Self::Hf(t) => t.encode(text, parse_special),
        }
    }

    /// The text of `ids`; control tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        match self {
            Self::Gguf(t) => t.decode(ids, skip_special),
            Self::Hf(t) => t.decode(ids, skip_special),
        }
    }

    /// Each token's bytes as they appear in generated text (a piece of a UTF-8 character for
    /// a byte token), by id; `None` for special tokens (control, unknown, special added ones),
    /// which never do.
    pub fn vocab_bytes(&self) -> Vec<Option<Vec<u8>>> {
        match self {
            Self::Gguf(t) => (0..t.vocab_size() as u32).map(|id| t.token_bytes(id)).collect(),
            Self::Hf(t) => t.vocab_bytes(),
        }
    }

    /// The id of a token text.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        match self {
            Self::Gguf(t) => t.token_to_id(text),
            Self::Hf(t) => t.token_to_id(text),
        }
    }

    /// The text of a token id, as the vocabulary stores it.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            Self::Gguf(t) => t.id_to_token(id),
            Self::Hf(t) => t.id_to_token(id),
        }
    }

    /// Number of tokens, added ones included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gguf(t) => t.vocab_size(),
            Self::Hf(t) => t.vocab_size(),
        }
    }
}

impl From<tokenizers::Tokenizer> for Tokenizer {
    fn from(tok: tokenizers::Tokenizer) -> Self {
        Self::Hf(Box::new(HfTokenizer::new(tok)))
    }
}

/// Builds the tokenizer stored in a GGUF file's metadata.
pub fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer, TokenizerError> {
    Ok(Tokenizer::Gguf(Box::new(GgufTokenizer::from_gguf(content)?)))
}

/// The special ids of a tokenizer from [`tokenizer_from_gguf`] (llama.cpp's rules); for a
/// `tokenizer.json` see [`hf::special_ids`].
pub fn special_ids(tok: &Tokenizer) -> SpecialIds {
    match tok {
        Tokenizer::Gguf(t) => t.special_ids(),
        Tokenizer::Hf(_) => hf::special_ids(&serde_json::Value::Null, None, tok),
    }
}

/// Reads a Hugging Face `tokenizer.json` (safetensors model folders).
pub fn tokenizer_from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
    Ok(Tokenizer::Hf(Box::new(HfTokenizer::from_file(path)?)))
}

/// The ids the engine feeds for a prompt `text`: BOS when the model adds it, then the text's
/// tokens. The engine parses special tokens in prompts (`parse_special = true`).
pub fn prompt_ids(
    tok: &Tokenizer,
    special: &SpecialIds,
    text: &str,
    parse_special: bool,
) -> Result<Vec<u32>, TokenizerError> {
    let mut ids: Vec<u32> = special.bos.into_iter().collect();
    ids.extend(tok.encode(text, parse_special)?);
    Ok(ids)
}

/// Loads only the tokenizer and special ids of the model at `path` (a `.gguf` file, or a
/// folder with `tokenizer.json`, `config.json` and optionally `tokenizer_config.json`), as the
/// engine does when it loads the whole model.
pub fn load(path: &Path) -> Result<(Tokenizer, SpecialIds), TokenizerError> {
    let read_err = |message: String| TokenizerError::Read {
        path: path.to_owned(),
        message,
    };
    if path.is_dir() {
        let tok = tokenizer_from_file(&path.join("tokenizer.json"))?;
        let config = hf::read_json(&path.join("config.json"))?;
        let tok_config_path = path.join("tokenizer_config.json");
        let tok_config = if tok_config_path.exists() {
            Some(hf::read_json(&tok_config_path)?)
        } else {
            None
        };
        let special = hf::special_ids(&config, tok_config.as_ref(), &tok);
        return Ok((tok, special));
    }
    let mut file = File::open(path).map_err(|e| read_err(e.to_string()))?;
    let content = Content::read(&mut file).map_err(|e| read_err(format!("not a GGUF file: {e}")))?;
    let tok = tokenizer_from_gguf(&content)?;
    let special = special_ids(&tok);
    Ok((tok, special))
}
