//! genq's chat templates render as Hugging Face's `apply_chat_template` renders them (jinja2).
//!
//! The reference, `tests/fixtures/chat_templates.json`, is written by
//! `scripts/chat-template-reference.py`: jinja2 set up as transformers sets it up, rendering
//! fixed conversations with the chat templates llama.cpp keeps in `models/templates/` (Llama
//! 3.1 and 3.2, Qwen2.5, Qwen3, Phi-3.5, Mistral Nemo and Small 3.2, SmolLM3, Gemma 2, ...),
//! plus short inline templates for the Python behaviour real ones lean on. This test renders
//! the same templates, read from the same llama.cpp sources, with genq's [`ChatTemplate`] on
//! the same fixed clock, and requires every text to be byte-equal, and every conversation the
//! reference refused (`raise_exception`) to be refused with the same message.
//!
//! The templates come from `$GENQ_LLAMACPP_SRC/models/templates` (the vendored llama.cpp
//! directory), by default from the checkout's `.cache/llamacpp/src/vendor/llama.cpp`, which
//! `scripts/fetch-llamacpp-src.sh` unpacks.
//!
//! Run: `cargo test -p genq-worker --test chat_templates`.

use std::path::PathBuf;

use genq_shared::ChatMessage;
use genq_worker::engine::llama::chat::{ChatError, ChatTemplate, Clock, DateTime};
use serde::Deserialize;

/// The templates the fixture must cover (issue: "at least Llama 3.1/3.2, Qwen2.5, Qwen3,
/// Phi-3.5 and Mistral").
const REQUIRED_TEMPLATES: [&str; 6] = [
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "Qwen-Qwen3-0.6B.jinja",
    "microsoft-Phi-3.5-mini-instruct.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
];

#[derive(Debug, Deserialize)]
struct Fixture {
    /// The clock both renderers read, `YYYY-MM-DDTHH:MM:SS`.
    now: String,
    templates: Vec<TemplateCases>,
    snippets: Vec<Snippet>,
}

#[derive(Debug, Deserialize)]
struct TemplateCases {
    file: String,
    bos_token: String,
    eos_token: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Snippet {
    source: String,
    bos_token: String,
    eos_token: String,
    #[serde(flatten)]
    case: Case,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    add_generation_prompt: bool,
    messages: Vec<ChatMessage>,
    /// The text jinja2 rendered, or absent when it refused.
    expected: Option<String>,
    /// `raise_exception`'s message when jinja2 refused.
    error: Option<String>,
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// llama.cpp's `models/templates` directory.
fn templates_dir() -> PathBuf {
    genq_worker::engine::llama::llamacpp_src::dir().unwrap_or_else(|e| panic!("{e}")).join("models/templates")
}

/// The fixture's fixed instant.
fn fixed_clock(now: &str) -> Clock {
    let field = |range: std::ops::Range<usize>| -> u32 {
        now.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("`now` is not YYYY-MM-DDTHH:MM:SS: {now}"))
    };
    let date = DateTime::new(
        field(0..4).into(),
        field(5..7),
        field(8..10),
        field(11..13),
        field(14..16),
        field(17..19),
    )
    .unwrap_or_else(|| panic!("`now` is not a valid date: {now}"));
    Clock::Fixed(date)
}

/// What differs between genq's rendering of `case` and the reference, if anything.
fn compare(template: &ChatTemplate, case: &Case) -> Option<String> {
    let got = template.render(&case.messages, case.add_generation_prompt);
    match (&case.expected, &case.error, got) {
        (Some(want), None, Ok(got)) if *want == got => None,
        (Some(want), None, Ok(got)) => {
            let at = want
                .char_indices()
                .zip(got.chars())
                .find(|((_, w), g)| w != g)
                .map_or(want.len().min(got.len()), |((i, _), _)| i);
            Some(format!(
                "text differs from byte {at}:\n  jinja2: {:?}\n  genq:   {:?}",
                want.get(at..).unwrap_or_default(),
                got.get(at..).unwrap_or_default()
            ))
        }
        (Some(_), None, Err(e)) => Some(format!("jinja2 rendered it, genq failed: {e}")),
        (None, Some(want), Err(ChatError::Refused { message })) if *want == message => None,
        (None, Some(want), Err(e)) => Some(format!(
            "jinja2 refused with {want:?}, genq failed otherwise: {e:?}"
        )),
        (None, Some(want), Ok(got)) => Some(format!(
            "jinja2 refused with {want:?}, genq rendered {got:?}"
        )),
        _ => Some("the fixture case has neither `expected` nor `error`".to_owned()),
    }
}

#[test]
fn llamacpp_templates_render_as_transformers_renders_them() {
    let fixture = fixture();
    let clock = fixed_clock(&fixture.now);
    let dir = templates_dir();
    for required in REQUIRED_TEMPLATES {
        assert!(
            fixture.templates.iter().any(|t| t.file == required),
            "the fixture lacks {required}"
        );
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for t in &fixture.templates {
        let path = dir.join(&t.file);
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let template = match ChatTemplate::new(source, t.bos_token.clone(), t.eos_token.clone()) {
            Ok(template) => template.with_clock(clock),
            Err(e) => {
                failures.push(format!("{}: {e}", t.file));
                continue;
            }
        };
        for case in &t.cases {
            checked += 1;
            if let Some(diff) = compare(&template, case) {
                failures.push(format!("{} / {}: {diff}", t.file, case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ from jinja2:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The refusals are part of the comparison: at least one (Mistral's "roles must
    // alternate") must be in the fixture.
    assert!(
        fixture
            .templates
            .iter()
            .flat_map(|t| &t.cases)
            .any(|c| c.error.is_some()),
        "no refused conversation in the fixture"
    );
}

#[test]
fn python_behaviour_templates_rely_on_matches_jinja2() {
    let fixture = fixture();
    let clock = fixed_clock(&fixture.now);
    let mut failures = Vec::new();
    for s in &fixture.snippets {
        let template =
            ChatTemplate::new(s.source.clone(), s.bos_token.clone(), s.eos_token.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", s.case.name))
                .with_clock(clock);
        if let Some(diff) = compare(&template, &s.case) {
            failures.push(format!("{}: {diff}", s.case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
