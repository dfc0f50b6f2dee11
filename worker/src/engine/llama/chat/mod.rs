//! Chat templates: turns a job's `messages` into the prompt text the model was trained on, by
//! running the model's own Jinja template (`tokenizer.chat_template`) with minijinja, rendered
//! as Hugging Face's `apply_chat_template` renders it with jinja2 (and llama.cpp's reference
//! templates agree: `worker/tests/chat_templates.rs`).
//!
//! Tokenizing the rendered prompt is not this module's business (see [`super::tokenizer`]);
//! the rendered text carries its markers (`<|im_start|>`) as text, which the tokenizer
//! recognises as special tokens.
//!
//! - `template`: [`ChatTemplate`], its errors, and where a model's template comes from;
//! - `environment`: minijinja configured like transformers' jinja2 environment;
//! - [`clock`]: `strftime_now`'s clock and C-style `strftime`;
//! - `json`: transformers' `tojson` (Python's `json.dumps`);
//! - `pyrepr`: Python's `str()` of values, for what templates print.

pub(crate) mod clock;
mod environment;
mod json;
mod pyrepr;
mod template;

pub use clock::{Clock, DateTime};
pub use template::{chat_template_from_gguf, ChatError, ChatTemplate};
