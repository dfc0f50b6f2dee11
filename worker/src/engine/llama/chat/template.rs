//! [`ChatTemplate`]: one model's chat template, compiled once, rendering a job's messages in
//! the context `apply_chat_template` gives (`messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, `tools` and `documents` as `None`), and where it comes from (GGUF metadata, or
//! ChatML for a model that has none).

use std::borrow::Cow;

use candle_core::quantized::gguf_file::Content;
use genq_shared::ChatMessage;
use minijinja::{context, Environment, Value};

use crate::engine::llama::tokenizer::Tokenizer;

use super::clock::Clock;
use super::environment::{environment, set_clock, translate_generation_tags, Raised};

const KEY_TEMPLATE: &str = "tokenizer.chat_template";
const TEMPLATE_NAME: &str = "chat";

/// ChatML without a default system prompt, for models whose files carry no template.
const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// `tokenizer.chat_template` is present but not a string.
    #[error("GGUF metadata `tokenizer.chat_template` is not a string")]
    NotAString,
    /// The template is not valid Jinja (as minijinja reads it): a broken model file.
    #[error("chat template does not compile: {0}")]
    Compile(#[source] minijinja::Error),
    /// The template refused the messages through `raise_exception(message)`, e.g. "roles must
    /// alternate user/assistant": the job's input is at fault, not the model.
    #[error("chat template refused the messages: {message}")]
    Refused {
        /// The template's own words.
        message: String,
    },
    /// Rendering failed otherwise: the template does something minijinja cannot (a Python
    /// method `pycompat` lacks, a type error), named with its line.
    #[error("chat template failed to render: {0}")]
    Render(#[source] minijinja::Error),
}

impl ChatError {
    fn from_render(err: minijinja::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = source {
            if let Some(raised) = e.downcast_ref::<Raised>() {
                return ChatError::Refused {
                    message: raised.0.clone(),
                };
            }
            source = e.source();
        }
        ChatError::Render(err)
    }
}

/// A compiled chat template with the BOS/EOS strings it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    /// Holds the one template, compiled once; `Send`, as the engine moves between threads.
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `template_source`; `bos` and `eos` are the strings it sees as `bos_token` and
    /// `eos_token`. `strftime_now` reads the system clock (see [`ChatTemplate::with_clock`]).
    pub fn new(template_source: String, bos: String, eos: String) -> Result<Self, ChatError> {
        let mut env = environment(Clock::System);
        let source = match translate_generation_tags(&template_source) {
            Cow::Owned(translated) => translated,
            Cow::Borrowed(_) => template_source,
        };
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(ChatError::Compile)?;
        Ok(Self { env, bos, eos })
    }

    /// Plain ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), for models without a template.
    pub fn chatml() -> Self {
        let mut env = environment(Clock::System);
        // A constant that compiles (tested); were it ever broken, `render` would report the
        // missing template rather than this panicking.
        let _ = env.add_template(TEMPLATE_NAME, CHATML);
        Self {
            env,
            bos: String::new(),
            eos: "<|im_end|>".to_owned(),
        }
    }

    /// The same template with `strftime_now` reading `clock`: a fixed date makes prompts of
    /// templates that print today's date (Llama 3.2, Mistral Small 3.2) reproducible.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        set_clock(&mut self.env, clock);
        self
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins (`<|im_start|>assistant\n` for ChatML).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatError::Compile)?;
        template
            .render(context! {
                messages => messages,
                tools => Value::from(()),
                documents => Value::from(()),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(ChatError::from_render)
    }
}

/// The template in `tokenizer.chat_template`, with BOS and EOS named through `tok`;
/// `None` when the file has no template (use [`ChatTemplate::chatml`] or plain prompts).
pub fn chat_template_from_gguf(
    content: &Content,
    tok: &Tokenizer,
) -> Option<Result<ChatTemplate, ChatError>> {
    let source = content.metadata.get(KEY_TEMPLATE)?;
    let Ok(source) = source.to_string() else {
        return Some(Err(ChatError::NotAString));
    };
    let token = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_u32().ok())
            .and_then(|id| tok.id_to_token(id))
            .unwrap_or_default()
    };
    Some(ChatTemplate::new(
        source.clone(),
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::llama::chat::clock::DateTime;
    use crate::engine::llama::tokenizer::tests::smollm2_gguf;
    use crate::engine::llama::tokenizer::tokenizer_from_gguf;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    fn smollm2_template() -> (ChatTemplate, Tokenizer) {
        let content = smollm2_gguf();
        let tok = tokenizer_from_gguf(&content).expect("tokenizer");
        let template = chat_template_from_gguf(&content, &tok)
            .expect("SmolLM2 ships a chat template")
            .expect("it compiles");
        (template, tok)
    }

    #[test]
    #[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
    fn smollm2_renders_system_and_user_as_chatml_with_generation_prompt() {
        let (template, _) = smollm2_template();
        let prompt = template
            .render(
                &[
                    msg("system", "You are a pirate."),
                    msg("user", "Where is the gold?"),
                ],
                true,
            )
            .expect("render");
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a pirate.<|im_end|>\n\
             <|im_start|>user\nWhere is the gold?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    #[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
    fn smollm2_adds_its_default_system_prompt_when_none_is_given() {
        let (template, tok) = smollm2_template();
        let prompt = template
            .render(&[msg("user", "What is 2+2?")], true)
            .expect("render");
        let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, \
                        trained by Hugging Face<|im_end|>\n\
                        <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
                        <|im_start|>assistant\n";
        assert_eq!(prompt, expected);
        // The rendered markers tokenize as the model's control tokens.
        let ids = tok.encode(prompt.as_str(), true).expect("encode");
        assert_eq!(&ids[..3], &[1, 9690, 198]);
        assert_eq!(&ids[ids.len() - 4..], &[1, 520, 9531, 198]);
    }

    #[test]
    #[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
    fn no_generation_prompt_ends_after_the_last_message() {
        let (template, _) = smollm2_template();
        let prompt = template
            .render(
                &[msg("system", "S"), msg("user", "U"), msg("assistant", "A")],
                false,
            )
            .expect("render");
        assert_eq!(
            prompt,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n\
             <|im_start|>assistant\nA<|im_end|>\n"
        );
    }

    #[test]
    #[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
    fn chatml_fallback_matches_smollm2_when_a_system_prompt_is_given() {
        let messages = [msg("system", "Be brief."), msg("user", "Hi")];
        let fallback = ChatTemplate::chatml()
            .render(&messages, true)
            .expect("render");
        assert_eq!(
            fallback,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let (template, _) = smollm2_template();
        assert_eq!(template.render(&messages, true).expect("render"), fallback);
    }

    #[test]
    fn bos_and_eos_tokens_are_in_the_context() {
        let template = ChatTemplate::new(
            "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into(),
            "<s>".into(),
            "</s>".into(),
        )
        .expect("compile");
        assert_eq!(
            template.render(&[msg("user", "x")], false).expect("render"),
            "<s>x</s>"
        );
    }

    #[test]
    fn raise_exception_rejects_the_messages_with_its_message() {
        let template = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}\
             {{ raise_exception('Conversation must start with a user message') }}\
             {% endif %}ok"
                .into(),
            String::new(),
            String::new(),
        )
        .expect("compile");
        assert_eq!(
            template
                .render(&[msg("user", "hi")], false)
                .expect("render"),
            "ok"
        );
        let err = template
            .render(&[msg("assistant", "hi")], false)
            .expect_err("must raise");
        match &err {
            ChatError::Refused { message } => {
                assert_eq!(message, "Conversation must start with a user message")
            }
            other => panic!("not a refusal: {other:?}"),
        }
        assert!(
            err.to_string()
                .contains("Conversation must start with a user message"),
            "{err}"
        );
    }

    #[test]
    fn block_whitespace_is_trimmed_like_transformers() {
        // Rendered by jinja2 with trim_blocks/lstrip_blocks (transformers' settings):
        // "  user: hi\n".
        let template = ChatTemplate::new(
            "{% for m in messages %}\n    {% if true %}\n  {{ m.role }}: {{ m.content }}\n    {% endif %}\n{% endfor %}\n"
                .into(),
            String::new(),
            String::new(),
        )
        .expect("compile");
        assert_eq!(
            template
                .render(&[msg("user", "hi")], false)
                .expect("render"),
            "  user: hi\n"
        );
    }

    #[test]
    fn python_string_methods_work_as_in_jinja2() {
        let template = ChatTemplate::new(
            "[{{ messages[0].content.strip() }}][{{ messages[0].content.startswith(' h') }}]\
             [{{ messages[0].content.split() | join(',') }}]"
                .into(),
            String::new(),
            String::new(),
        )
        .expect("compile");
        assert_eq!(
            template
                .render(&[msg("user", " hi there ")], false)
                .expect("render"),
            "[hi there][True][hi,there]"
        );
    }

    #[test]
    fn an_unknown_method_is_a_render_error_naming_it() {
        let template = ChatTemplate::new(
            "{{ messages[0].content.frobnicate() }}".into(),
            String::new(),
            String::new(),
        )
        .expect("compiles; methods are looked up at render time");
        let err = template
            .render(&[msg("user", "hi")], false)
            .expect_err("no such method");
        assert!(matches!(err, ChatError::Render(_)), "{err:?}");
        assert!(err.to_string().contains("frobnicate"), "{err}");
    }

    #[test]
    fn strftime_now_reads_the_templates_clock() {
        let template = ChatTemplate::new(
            "{{ strftime_now('%d %b %Y') }}".into(),
            String::new(),
            String::new(),
        )
        .expect("compile");
        let fixed = DateTime::new(2024, 7, 26, 12, 0, 0).expect("valid date");
        assert_eq!(
            template
                .with_clock(Clock::Fixed(fixed))
                .render(&[], false)
                .expect("render"),
            "26 Jul 2024"
        );
    }

    #[test]
    fn broken_template_is_a_compile_error() {
        let err = ChatTemplate::new(
            "{% for m in messages %}".into(),
            String::new(),
            String::new(),
        )
        .expect_err("unclosed for");
        assert!(matches!(err, ChatError::Compile(_)), "{err:?}");
    }
}
