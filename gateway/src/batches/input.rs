//! A batch's input file read into jobs. Each line is `{"custom_id", "method", "url", "body"}`,
//! `body` being the request the line's `url` takes. A line that breaks a rule goes to the batch's
//! error file with its `custom_id` and a message naming the field, and the others run (at low
//! priority unless a body says `priority`); a file over
//! `gateway.batch_max_requests`, or with a line lacking its `custom_id` or repeating one, is
//! refused whole.

use std::collections::HashSet;

use genq_shared::valid::{validate, Limits};
use genq_shared::{JobRequest, Priority};
use serde_json::Value;

use crate::error::ApiError;
use crate::openai::{openai_names, with_samples, OpenAiRequest, Route};
use crate::request::parse_value;

/// What a batch runs.
#[derive(Debug, Default)]
pub struct BatchInput {
    /// Each request's `custom_id`, by line (blank lines skipped).
    pub custom_ids: Vec<String>,
    /// The valid requests' jobs, with their line.
    pub jobs: Vec<(usize, JobRequest)>,
    /// The refused requests' lines and why.
    pub invalid: Vec<(usize, String)>,
}

/// The job id of line `line` of batch `batch_id` (so a batch's results are found by line).
pub fn job_id(batch_id: &str, line: usize) -> String {
    format!("{batch_id}.{line}")
}

/// How much one batch may ask for.
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    /// Requests in the file (`gateway.batch_max_requests`).
    pub max_requests: usize,
    /// Choices per request (`gateway.max_n`).
    pub max_n: u32,
}

/// Reads `content` for a batch on `route`.
pub fn read_input(content: &[u8], batch_id: &str, route: Route, limits: InputLimits) -> Result<BatchInput, ApiError> {
    let max_requests = limits.max_requests;
    let text = std::str::from_utf8(content).map_err(|e| ApiError::invalid_value("input_file_id", format!("the file is not UTF-8: {e}")))?;
    let mut input = BatchInput::default();
    let mut seen = HashSet::new();
    for (n, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line = input.custom_ids.len();
        if line == max_requests {
            return Err(ApiError::invalid_value("input_file_id", format!("the file holds more than {max_requests} requests (gateway.batch_max_requests)")));
        }
        let mut value: Value = serde_json::from_str(raw).map_err(|e| ApiError::invalid_value("input_file_id", format!("line {} is not JSON: {e}", n + 1)))?;
        let Some(custom_id) = value.get("custom_id").and_then(Value::as_str) else {
            return Err(ApiError::invalid_value("input_file_id", format!("line {} has no `custom_id` string", n + 1)));
        };
        if !seen.insert(custom_id.to_string()) {
            return Err(ApiError::invalid_value("input_file_id", format!("`custom_id` {custom_id:?} appears twice (line {})", n + 1)));
        }
        input.custom_ids.push(custom_id.to_string());
        match line_job(&mut value, route, limits.max_n) {
            Ok(mut job) => {
                job.id = Some(job_id(batch_id, line));
                job.batch = Some(batch_id.to_string());
                // Bulk work waits behind interactive requests unless its line asks otherwise.
                job.priority = job.priority.or(Some(Priority::Low));
                match validate(&job, &Limits::default()) {
                    Ok(_) => input.jobs.push((line, job)),
                    Err(e) => input.invalid.push((line, ApiError::from_validation(&e, openai_names).message)),
                }
            }
            Err(message) => input.invalid.push((line, message)),
        }
    }
    if input.custom_ids.is_empty() {
        return Err(ApiError::invalid_value("input_file_id", "the file holds no request"));
    }
    Ok(input)
}

/// The job one line asks for, or why it cannot run (naming the field).
fn line_job(line: &mut Value, route: Route, max_n: u32) -> Result<JobRequest, String> {
    let field = |name: &str| line.get(name).and_then(Value::as_str);
    if field("method") != Some("POST") {
        return Err("`method` must be \"POST\"".into());
    }
    if field("url") != Some(route.path()) {
        return Err(format!("`url` must be the batch's endpoint, {}", route.path()));
    }
    let body = line.get_mut("body").filter(|b| b.is_object()).ok_or("`body` must be an object")?.take();
    let req: OpenAiRequest = parse_value(body).map_err(|e| format!("`body`: {}", e.message))?;
    for (asked, name) in [(req.stream == Some(true), "stream"), (req.echo == Some(true), "echo")] {
        if asked {
            return Err(format!("`body.{name}` is not supported in a batch"));
        }
    }
    let n = req.choices(max_n).map_err(|e| format!("`body.n` {}", e.message))?;
    let job = match route {
        Route::Completions => req.completion_job(),
        Route::Chat => req.chat_job(),
    };
    job.map(|j| with_samples(j, n)).map_err(|e| format!("`body`: {}", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InputLimits = InputLimits { max_requests: 10, max_n: 4 };

    fn line(custom_id: &str, body: &str) -> String {
        format!(r#"{{"custom_id":"{custom_id}","method":"POST","url":"/v1/completions","body":{body}}}"#)
    }

    #[test]
    fn bad_lines_are_refused_by_field_and_the_rest_run() {
        let file = [
            line("a", r#"{"prompt":"hi","max_tokens":3}"#),
            String::new(),
            line("b", r#"{"prompt":"hi","top_p":7}"#),
            line("c", r#"{"prompt":"hi","temprature":1}"#),
            r#"{"custom_id":"d","method":"GET","url":"/v1/completions","body":{}}"#.to_string(),
            line("e", r#"{"prompt":"hi","stream":true}"#),
            line("f", r#"{"prompt":"hi","n":3,"seed":1}"#),
            line("g", r#"{"prompt":"hi","n":5}"#),
        ]
        .join("\n");
        let input = read_input(file.as_bytes(), "batch-x", Route::Completions, LIMITS).expect("read");
        assert_eq!(input.custom_ids, vec!["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(input.jobs.len(), 2);
        assert_eq!((input.jobs[1].0, input.jobs[1].1.n), (5, Some(3)), "n samples of one job");
        let (at, job) = &input.jobs[0];
        assert_eq!((*at, job.id.as_deref(), job.batch.as_deref(), job.max_new_tokens), (0, Some("batch-x.0"), Some("batch-x"), Some(3)));
        assert_eq!(job.priority, Some(Priority::Low), "batch jobs run at low priority by default");
        let why: Vec<(usize, &str)> = input.invalid.iter().map(|(l, m)| (*l, m.as_str())).collect();
        assert!(why[0].0 == 1 && why[0].1.contains("top_p"), "{why:?}");
        assert!(why[1].0 == 2 && why[1].1.contains("temprature"), "{why:?}");
        assert!(why[2].0 == 3 && why[2].1.contains("method"), "{why:?}");
        assert!(why[3].0 == 4 && why[3].1.contains("stream"), "{why:?}");
        assert!(why[4].0 == 6 && why[4].1.contains("`body.n`"), "{why:?}");
    }

    #[test]
    fn a_file_with_a_repeated_custom_id_or_too_many_lines_is_refused_whole() {
        let twice = [line("a", r#"{"prompt":"x"}"#), line("a", r#"{"prompt":"y"}"#)].join("\n");
        let e = read_input(twice.as_bytes(), "b", Route::Completions, LIMITS).expect_err("repeated");
        assert!(e.message.contains("\"a\" appears twice"), "{e}");
        let three = [line("a", r#"{"prompt":"x"}"#), line("b", r#"{"prompt":"x"}"#), line("c", r#"{"prompt":"x"}"#)].join("\n");
        let e = read_input(three.as_bytes(), "b", Route::Completions, InputLimits { max_requests: 2, ..LIMITS }).expect_err("too many");
        assert!(e.message.contains("more than 2"), "{e}");
        let wrong_url = line("a", r#"{"prompt":"x"}"#);
        let input = read_input(wrong_url.as_bytes(), "b", Route::Chat, LIMITS).expect("read");
        assert!(input.invalid[0].1.contains("/v1/chat/completions"), "{:?}", input.invalid);
    }
}
