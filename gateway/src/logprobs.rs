//! OpenAI's log-prob shapes built from a result's token log-probs: `/v1/completions`' `tokens`,
//! `token_logprobs`, `top_logprobs` and `text_offset` (the prompt's tokens first when it is
//! echoed), and `/v1/chat/completions`' `logprobs.content`.

use genq_shared::result::TokenLogprob;
use serde_json::{json, Map, Value};

/// Most alternatives per token OpenAI's `logprobs` / `top_logprobs` may ask for.
pub const MAX_TOP: u32 = genq_shared::valid::MAX_TOP_LOGPROBS;

/// A completion choice's `logprobs`: every prompt token (when echoed), then every generated one.
/// A prompt's first token has `null` for its log-prob and its alternatives; offsets count
/// characters from the start of the choice's text.
pub fn completion(prompt: Option<&[TokenLogprob]>, generated: &[TokenLogprob]) -> Value {
    let tokens: Vec<&TokenLogprob> = prompt.unwrap_or_default().iter().chain(generated).collect();
    let mut offset = 0;
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in &tokens {
        text_offset.push(offset);
        offset += t.token.chars().count();
    }
    let top = |t: &TokenLogprob| match t.logprob {
        None => Value::Null,
        Some(_) => Value::Object(t.top.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect::<Map<_, _>>()),
    };
    json!({
        "tokens": tokens.iter().map(|t| t.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| top(t)).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

/// A chat choice's `logprobs`: one entry per generated token with its UTF-8 bytes.
pub fn chat(generated: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = generated
        .iter()
        .map(|t| {
            let top: Vec<Value> = t.top.iter().map(|a| json!({ "token": a.token, "logprob": a.logprob, "bytes": a.token.as_bytes() })).collect();
            json!({ "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes(), "top_logprobs": top })
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

#[cfg(test)]
mod tests {
    use super::*;
    use genq_shared::result::TopLogprob;

    fn tok(id: u32, token: &str, logprob: Option<f64>, top: &[(&str, f64)]) -> TokenLogprob {
        let top = top.iter().map(|&(t, l)| TopLogprob { id: 0, token: t.into(), logprob: l }).collect();
        TokenLogprob { id, token: token.into(), logprob, top }
    }

    #[test]
    fn echoed_prompt_tokens_come_first_with_a_null_first_log_prob() {
        let prompt = [tok(1, "Hé", None, &[]), tok(2, " there", Some(-1.5), &[(" you", -0.5), (" there", -1.5)])];
        let generated = [tok(3, "!", Some(-0.25), &[("!", -0.25)])];
        let v = completion(Some(&prompt), &generated);
        assert_eq!(v["tokens"], json!(["Hé", " there", "!"]));
        assert_eq!(v["token_logprobs"], json!([null, -1.5, -0.25]));
        assert_eq!(v["top_logprobs"], json!([null, {" you": -0.5, " there": -1.5}, {"!": -0.25}]));
        assert_eq!(v["text_offset"], json!([0, 2, 8]), "characters, not bytes");
        assert_eq!(completion(None, &generated)["text_offset"], json!([0]));
    }

    #[test]
    fn chat_entries_carry_bytes_and_alternatives() {
        let v = chat(&[tok(3, "é", Some(-0.1), &[("é", -0.1)])]);
        assert_eq!(v["content"][0], json!({ "token": "é", "logprob": -0.1, "bytes": [195, 169], "top_logprobs": [{ "token": "é", "logprob": -0.1, "bytes": [195, 169] }] }));
        assert_eq!(v["refusal"], Value::Null);
    }
}
