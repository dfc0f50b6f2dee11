//! The llama engine's [`PromptEncoder`]: renders chat with the model's template and tokenizes,
//! checking the ids against the vocabulary. Shared (`Arc`) between the engine thread, which
//! detokenizes with the same tokenizer, and the pipeline, which encodes before admission.

use genq_shared::valid::PromptInput;
use genq_shared::ValidJob;

use super::chat::ChatTemplate;
use super::tokenizer::{self, SpecialIds, Tokenizer};
use crate::engine::{AdmitError, PromptEncoder};

/// A model's tokenizer, special ids and chat template.
pub(super) struct LlamaPrompts {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// BOS, EOS and end-of-turn ids.
    pub special: SpecialIds,
    /// The chat template.
    pub template: ChatTemplate,
    /// The model's vocabulary size: ids at or past it are refused.
    pub vocab: usize,
}

impl PromptEncoder for LlamaPrompts {
    fn encode(&self, job: &ValidJob) -> Result<Vec<u32>, AdmitError> {
        let (text, field) = match &job.input {
            PromptInput::Text(t) => (t.clone(), "prompt"),
            PromptInput::Chat(messages) => {
                let text = self.template.render(messages, true).map_err(|e| AdmitError {
                    field: "messages",
                    message: format!("cannot be rendered with the chat template: {e}"),
                })?;
                (text, "messages")
            }
        };
        let ids = tokenizer::prompt_ids(&self.tokenizer, &self.special, &text, true).map_err(
            |e| AdmitError {
                field,
                message: format!("cannot be tokenized: {e}"),
            },
        )?;
        if ids.len() == usize::from(self.special.bos.is_some()) {
            return Err(AdmitError {
                field,
                message: "is empty after tokenization".into(),
            });
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(AdmitError {
                field,
                message: format!(
                    "holds token {bad}, outside the model's vocabulary of {}",
                    self.vocab
                ),
            });
        }
        Ok(ids)
    }
}
