//! A batch's input file read into jobs. Each line is `{"custom_id", "method", "url", "body"}`,
//! `body` being the request the line's `url` takes. A line that breaks a rule goes to the batch's
//! error file with its `custom_id` and a message naming the field, and the others run (at low
//! priority unless a body says `priority`); a file over
//! `gateway.batch_max_requests`, or with a line lacking its `custom_id` or repeating one, is
//! refused whole.

use std::collections::HashSet;

use genq_shared::valid::{validate, Limits};
use genq_shared::{JobRequest, Priority};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::openai::{openai_names, with_samples, OpenAiRequest, Route};
use crate::request::parse_json;

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

/// Reads `content` for a batch on `route`: its lines are parsed and checked on every core, then
/// gathered in order (so the first error in the file is the one reported).
pub fn read_input(
    content: &[u8],
    batch_id: &str,
    route: Route,
    limits: InputLimits,
) -> Result<BatchInput, ApiError> {
    let max_requests = limits.max_requests;
    let text = std::str::from_utf8(content).map_err(|e| {
        ApiError::invalid_value("input_file_id", format!("the file is not UTF-8: {e}"))
    })?;
    let raw: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    if raw.len() > max_requests {
        return Err(ApiError::invalid_value(
            "input_file_id",
            format!(
                "the file holds more than {max_requests} requests (gateway.batch_max_requests)"
            ),
        ));
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(raw.len().div_ceil(PARSED_PER_THREAD_AT_LEAST))
        .max(1);
    let per_thread = raw.len().div_ceil(threads).max(1);
    let parsed: Vec<Vec<Parsed>> = std::thread::scope(|scope| {
        let runs: Vec<_> = raw
            .chunks(per_thread)
            .enumerate()
            .map(|(i, run)| {
                scope.spawn(move || parse_run(run, i * per_thread, batch_id, route, limits.max_n))
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join().unwrap_or_else(|_| {
                    vec![Parsed::Fatal(ApiError::internal(
                        "reading the file's lines failed",
                    ))]
                })
            })
            .collect()
    });
    let mut input = BatchInput::default();
    let mut seen = HashSet::with_capacity(raw.len());
    for p in parsed.into_iter().flatten() {
        let (n, custom_id, outcome) = match p {
            Parsed::Fatal(e) => return Err(e),
            Parsed::Line {
                n,
                custom_id,
                outcome,
            } => (n, custom_id, outcome),
        };
        let line = input.custom_ids.len();
        if !seen.insert(custom_id.clone()) {
            return Err(ApiError::invalid_value(
                "input_file_id",
                format!("`custom_id` {custom_id:?} appears twice (line {})", n + 1),
            ));
        }
        input.custom_ids.push(custom_id);
        match outcome {
            Ok(job) => input.jobs.push((line, *job)),
            Err(message) => input.invalid.push((line, message)),
        }
    }
    if input.custom_ids.is_empty() {
        return Err(ApiError::invalid_value(
            "input_file_id",
            "the file holds no request",
        ));
    }
    Ok(input)
}

/// Lines below this many per thread are not worth another thread.
const PARSED_PER_THREAD_AT_LEAST: usize = 512;

/// One non-blank line of the file, read.
enum Parsed {
    /// The whole file is refused (the line is not JSON or has no `custom_id`).
    Fatal(ApiError),
    /// File line `n`: its `custom_id` and its job or why it cannot run.
    Line {
        n: usize,
        custom_id: String,
        outcome: Result<Box<JobRequest>, String>,
    },
}

/// A line as written, its fields still raw, so the body is parsed once, straight into the request.
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    custom_id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

/// Reads the non-blank lines `run`, whose first is request `first` of the file; stops after a
/// line that refuses the whole file.
fn parse_run(
    run: &[(usize, &str)],
    first: usize,
    batch_id: &str,
    route: Route,
    max_n: u32,
) -> Vec<Parsed> {
    let mut out = Vec::with_capacity(run.len());
    for (i, &(n, raw)) in run.iter().enumerate() {
        let line: RawLine = match serde_json::from_str(raw) {
            Ok(l) => l,
            Err(e) => {
                out.push(Parsed::Fatal(ApiError::invalid_value(
                    "input_file_id",
                    format!("line {} is not JSON: {e}", n + 1),
                )));
                break;
            }
        };
        let Some(custom_id) = line
            .custom_id
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        else {
            out.push(Parsed::Fatal(ApiError::invalid_value(
                "input_file_id",
                format!("line {} has no `custom_id` string", n + 1),
            )));
            break;
        };
        let outcome = line_job(&line, route, max_n).and_then(|mut job| {
            job.id = Some(job_id(batch_id, first + i));
            job.batch = Some(batch_id.to_string());
            // Bulk work waits behind interactive requests unless its line asks otherwise.
            job.priority = job.priority.or(Some(Priority::Low));
            validate(&job, &Limits::default())
                .map_err(|e| ApiError::from_validation(&e, openai_names).message)?;
            Ok(Box::new(job))
        });
        out.push(Parsed::Line {
            n,
            custom_id,
            outcome,
        });
    }
    out
}

/// The job one line asks for, or why it cannot run (naming the field).
fn line_job(line: &RawLine<'_>, route: Route, max_n: u32) -> Result<JobRequest, String> {
    let field = |v: Option<&RawValue>| v.and_then(|v| serde_json::from_str::<String>(v.get()).ok());
    if field(line.method).as_deref() != Some("POST") {
        return Err("`method` must be \"POST\"".into());
    }
    if field(line.url).as_deref() != Some(route.path()) {
        return Err(format!(
            "`url` must be the batch's endpoint, {}",
            route.path()
        ));
    }
    let body = line
        .body
        .filter(|b| b.get().trim_start().starts_with('{'))
        .ok_or("`body` must be an object")?;
    let req: OpenAiRequest =
        parse_json(body.get().as_bytes()).map_err(|e| format!("`body`: {}", e.message))?;
    for (asked, name) in [
        (req.stream == Some(true), "stream"),
        (req.echo == Some(true), "echo"),
    ] {
        if asked {
            return Err(format!("`body.{name}` is not supported in a batch"));
        }
    }
    let n = req
        .choices(max_n)
        .map_err(|e| format!("`body.n` {}", e.message))?;
    let job = match route {
        Route::Completions => req.completion_job(),
        Route::Chat => req.chat_job(),
    };
    job.map(|j| with_samples(j, n))
        .map_err(|e| format!("`body`: {}", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InputLimits = InputLimits {
        max_requests: 10,
        max_n: 4,
    };

    fn line(custom_id: &str, body: &str) -> String {
        format!(
            r#"{{"custom_id":"{custom_id}","method":"POST","url":"/v1/completions","body":{body}}}"#
        )
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
        let input =
            read_input(file.as_bytes(), "batch-x", Route::Completions, LIMITS).expect("read");
        assert_eq!(input.custom_ids, vec!["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(input.jobs.len(), 2);
        assert_eq!(
            (input.jobs[1].0, input.jobs[1].1.n),
            (5, Some(3)),
            "n samples of one job"
        );
        let (at, job) = &input.jobs[0];
        assert_eq!(
            (
                *at,
                job.id.as_deref(),
                job.batch.as_deref(),
                job.max_new_tokens
            ),
            (0, Some("batch-x.0"), Some("batch-x"), Some(3))
        );
        assert_eq!(
            job.priority,
            Some(Priority::Low),
            "batch jobs run at low priority by default"
        );
        let why: Vec<(usize, &str)> = input
            .invalid
            .iter()
            .map(|(l, m)| (*l, m.as_str()))
            .collect();
        assert!(why[0].0 == 1 && why[0].1.contains("top_p"), "{why:?}");
        assert!(why[1].0 == 2 && why[1].1.contains("temprature"), "{why:?}");
        assert!(why[2].0 == 3 && why[2].1.contains("method"), "{why:?}");
        assert!(why[3].0 == 4 && why[3].1.contains("stream"), "{why:?}");
        assert!(why[4].0 == 6 && why[4].1.contains("`body.n`"), "{why:?}");
    }

    #[test]
    fn a_file_read_on_several_threads_keeps_its_order_and_finds_the_first_error() {
        let big = InputLimits {
            max_requests: 5000,
            max_n: 1,
        };
        let mut lines: Vec<String> = (0..3000)
            .map(|i| {
                line(
                    &format!("r{i}"),
                    &format!(r#"{{"prompt":"p{i}","max_tokens":1}}"#),
                )
            })
            .collect();
        lines[2500] = line("r2500", r#"{"prompt":"x","top_p":9}"#);
        let input =
            read_input(lines.join("\n").as_bytes(), "b", Route::Completions, big).expect("read");
        assert_eq!(input.custom_ids.len(), 3000);
        assert!(
            input
                .custom_ids
                .iter()
                .enumerate()
                .all(|(i, c)| *c == format!("r{i}")),
            "custom_ids in file order"
        );
        assert!(input
            .jobs
            .iter()
            .all(|(l, j)| j.id.as_deref() == Some(format!("b.{l}").as_str())
                && j.prompt.as_deref() == Some(format!("p{l}").as_str())));
        assert_eq!(
            input.invalid.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![2500]
        );
        // A repeat far from its first use, and a broken line after it: the repeat, found first, is reported.
        lines[2900] = line("r10", r#"{"prompt":"x"}"#);
        lines[2950] = "{not json".into();
        let e = read_input(lines.join("\n").as_bytes(), "b", Route::Completions, big)
            .expect_err("repeated");
        assert!(
            e.message.contains("\"r10\" appears twice (line 2901)"),
            "{e}"
        );
        lines[2900] = line("r2900", r#"{"prompt":"x"}"#);
        let e = read_input(lines.join("\n").as_bytes(), "b", Route::Completions, big)
            .expect_err("broken");
        assert!(e.message.contains("line 2951 is not JSON"), "{e}");
    }

    #[test]
    fn a_file_with_a_repeated_custom_id_or_too_many_lines_is_refused_whole() {
        let twice = [
            line("a", r#"{"prompt":"x"}"#),
            line("a", r#"{"prompt":"y"}"#),
        ]
        .join("\n");
        let e =
            read_input(twice.as_bytes(), "b", Route::Completions, LIMITS).expect_err("repeated");
        assert!(e.message.contains("\"a\" appears twice"), "{e}");
        let three = [
            line("a", r#"{"prompt":"x"}"#),
            line("b", r#"{"prompt":"x"}"#),
            line("c", r#"{"prompt":"x"}"#),
        ]
        .join("\n");
        let e = read_input(
            three.as_bytes(),
            "b",
            Route::Completions,
            InputLimits {
                max_requests: 2,
                ..LIMITS
            },
        )
        .expect_err("too many");
        assert!(e.message.contains("more than 2"), "{e}");
        let wrong_url = line("a", r#"{"prompt":"x"}"#);
        let input = read_input(wrong_url.as_bytes(), "b", Route::Chat, LIMITS).expect("read");
        assert!(
            input.invalid[0].1.contains("/v1/chat/completions"),
            "{:?}",
            input.invalid
        );
    }
}
