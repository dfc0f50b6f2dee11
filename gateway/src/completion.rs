//! OpenAI's non-streamed answers (`text_completion`, `chat.completion`) built from a job's
//! result, as typed values that serialize straight to text: the synchronous routes and every
//! line of a batch's output file use them.

use serde::Serialize;
use serde_json::Value;

use genq_shared::JobResult;

use crate::logprobs;
use crate::openai::{finish_reason, now_secs, Route};

/// The whole answer to a request for `n` choices.
#[derive(Debug, Serialize)]
pub struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChoiceOut<'a>>,
    usage: Usage,
}

/// One choice: a completion's `text` or a chat `message`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ChoiceOut<'a> {
    Text {
        index: usize,
        text: String,
        logprobs: Value,
        finish_reason: &'static str,
    },
    Chat {
        index: usize,
        message: Message<'a>,
        logprobs: Value,
        finish_reason: &'static str,
    },
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

/// `usage`: the prompt counted once, every sample's tokens.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// `usage` from the job's token counts.
pub fn usage(r: &JobResult) -> Usage {
    let prompt = r.prompt_tokens.unwrap_or(0);
    let completion = r.completion_tokens.unwrap_or(0);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

/// The response id OpenAI's clients expect on each route.
pub(crate) fn response_id(route: Route, job_id: &str) -> String {
    match route {
        Route::Completions => format!("cmpl-{job_id}"),
        Route::Chat => format!("chatcmpl-{job_id}"),
    }
}

/// What one choice is made of: the sample's text, finish and generated log-probs.
struct Sample<'a> {
    text: &'a str,
    finish: &'static str,
    generated: Option<&'a [genq_shared::result::TokenLogprob]>,
}

/// One choice; `echo` is the prompt a completion echoes before its text (its tokens are in the
/// result's `prompt_logprobs`).
fn choice<'a>(
    route: Route,
    index: usize,
    r: &'a JobResult,
    s: Sample<'a>,
    echo: Option<&str>,
) -> ChoiceOut<'a> {
    match route {
        Route::Completions => {
            let text = match echo {
                Some(prompt) => format!("{prompt}{}", s.text),
                None => s.text.to_string(),
            };
            let asked = s.generated.is_some() || r.prompt_logprobs.is_some();
            let lp = if asked {
                logprobs::completion(
                    r.prompt_logprobs.as_deref(),
                    s.generated.unwrap_or_default(),
                )
            } else {
                Value::Null
            };
            // A scored prompt (`echo` with `max_tokens: 0`) stopped at its length limit, 0.
            let finish_reason = if r.kind.as_deref() == Some("score") {
                "length"
            } else {
                s.finish
            };
            ChoiceOut::Text {
                index,
                text,
                logprobs: lp,
                finish_reason,
            }
        }
        Route::Chat => ChoiceOut::Chat {
            index,
            message: Message {
                role: "assistant",
                content: s.text,
            },
            logprobs: s.generated.map_or(Value::Null, logprobs::chat),
            finish_reason: s.finish,
        },
    }
}

/// The whole answer to a request for `n` choices, from its job's result: the job's samples
/// (`choices`) in order, or `n` copies of a scored prompt (all the same); `usage` counts the
/// prompt once and the tokens of every sample.
pub(crate) fn full_response<'a>(
    route: Route,
    r: &'a JobResult,
    n: u32,
    model: &'a str,
    echo: Option<&str>,
) -> Completion<'a> {
    let choices: Vec<ChoiceOut<'a>> = match &r.choices {
        Some(samples) => samples
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let finish = finish_reason(&JobResult {
                    finish_reason: c.finish_reason,
                    ..JobResult::default()
                });
                choice(
                    route,
                    i,
                    r,
                    Sample {
                        text: &c.text,
                        finish,
                        generated: c.token_logprobs.as_deref(),
                    },
                    echo,
                )
            })
            .collect(),
        None => (0..n.max(1) as usize)
            .map(|i| {
                let s = Sample {
                    text: r.text.as_deref().unwrap_or(""),
                    finish: finish_reason(r),
                    generated: r.token_logprobs.as_deref(),
                };
                choice(route, i, r, s, echo)
            })
            .collect(),
    };
    let object = if route == Route::Chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    Completion {
        id: response_id(route, &r.id),
        object,
        created: now_secs(),
        model,
        choices,
        usage: usage(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genq_shared::result::Choice;
    use genq_shared::FinishReason;

    fn value(c: Completion<'_>) -> Value {
        serde_json::to_value(c).expect("serializes")
    }

    #[test]
    fn responses_carry_usage_and_openai_finish_reasons() {
        let r = JobResult {
            id: "j1".into(),
            text: Some("Paris.".into()),
            finish_reason: Some(FinishReason::Eos),
            prompt_tokens: Some(7),
            completion_tokens: Some(3),
            ..JobResult::default()
        };
        let chat = value(full_response(Route::Chat, &r, 1, "m", None));
        assert_eq!(
            chat,
            serde_json::json!({
                "id": "chatcmpl-j1", "object": "chat.completion", "created": chat["created"], "model": "m",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Paris." }, "logprobs": null, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10 }
            })
        );
        let length = JobResult {
            finish_reason: Some(FinishReason::Length),
            ..r.clone()
        };
        let text = value(full_response(Route::Completions, &length, 1, "m", None));
        assert_eq!(
            text["choices"],
            serde_json::json!([{ "index": 0, "text": "Paris.", "logprobs": null, "finish_reason": "length" }])
        );
        assert_eq!(text["object"], "text_completion");
        assert_eq!(text["id"], "cmpl-j1");
        let sample = |text: &str, tokens| Choice {
            text: text.into(),
            finish_reason: Some(FinishReason::Length),
            completion_tokens: tokens,
            token_logprobs: None,
        };
        let two = JobResult {
            completion_tokens: Some(8),
            choices: Some(vec![sample("Paris.", 3), sample("Lyon?", 5)]),
            ..r.clone()
        };
        let two = value(full_response(Route::Chat, &two, 2, "m", None));
        assert_eq!(
            (
                two["choices"][1]["index"].clone(),
                two["choices"][1]["message"]["content"].clone()
            ),
            (1.into(), "Lyon?".into())
        );
        assert_eq!(
            two["choices"][1]["finish_reason"], "length",
            "each sample's own finish"
        );
        assert_eq!(
            two["usage"],
            serde_json::json!({ "prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15 }),
            "the prompt counted once"
        );
        let scored = value(full_response(
            Route::Completions,
            &JobResult {
                kind: Some("score".into()),
                ..r
            },
            3,
            "m",
            Some("Hi"),
        ));
        assert_eq!(
            scored["choices"].as_array().map(Vec::len),
            Some(3),
            "a scored prompt answers every choice"
        );
        assert_eq!(
            scored["choices"][2]["text"], "HiParis.",
            "the prompt echoed before the text"
        );
        assert_eq!(scored["choices"][2]["finish_reason"], "length");
    }
}
