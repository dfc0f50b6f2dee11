//! The HTTP gateway (`genq serve`) with clients nobody here wrote: `curl` for the original
//! `POST /generate` and `/v1/jobs`, and the official `openai` Python package (installed into
//! `.cache/py-venv` by `scripts/py-venv.sh`) for completions, chat and streaming. All against a
//! real `genq-worker` running the real default model, through the real RabbitMQ and Redis.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use genq_shared::keys::{KeySchema, CANCEL_FIELD};
use genq_shared::{JobResult, JobStatus};
use genq_tests::gateway::GatewayProcess;
use genq_tests::{bin, default_model, redis_url, scratch_dir, workspace_root, Sandbox};

/// The bearer token the test gateway accepts (given through the environment, as in production).
const TOKEN: &str = "test-token-5be1";

/// One curl exchange.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: String,
    body: String,
    /// curl's own exit code (28: its `--max-time` passed).
    exit: Option<i32>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Runs `curl -s -i` with `args` (+ the bearer token unless `token` is None).
fn curl(token: Option<&str>, args: &[&str]) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.args(args).output().expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (headers, body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or((text.clone(), String::new()));
    let status = headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, headers, body, exit: out.status.code() }
}

fn post_json(base: &str, path: &str, body: &str) -> Reply {
    curl(Some(TOKEN), &["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", body, &format!("{base}{path}")])
}

fn assert_error(reply: &Reply, status: u16, param: Option<&str>, code: Option<&str>) {
    assert_eq!(reply.status, status, "{reply:?}");
    let e = &reply.json()["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()) && e["type"].is_string(), "OpenAI error shape: {reply:?}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{reply:?}");
        assert!(e["message"].as_str().unwrap_or_default().contains(p), "the message names `{p}`: {reply:?}");
    }
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{reply:?}");
    }
}

/// Waits until the gateway has asked for job `id` to be cancelled (its cancel field is set) and
/// the worker has ended it `cancelled`.
async fn assert_cancelled(sb: &Sandbox, id: &str, what: &str) {
    let keys = KeySchema::new(sb.prefix.clone());
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let results = sb.results().await;
    let until = Instant::now() + Duration::from_secs(30);
    let (mut requested, mut last) = (false, None);
    while Instant::now() < until {
        requested |= redis::cmd("HEXISTS").arg(keys.job(id)).arg(CANCEL_FIELD).query_async::<i64>(&mut conn).await.expect("HEXISTS") == 1;
        last = results.get(id).await.expect("redis");
        if requested && last.as_ref().and_then(|r| r.status) == Some(JobStatus::Cancelled) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: job {id} was not cancelled (cancel requested: {requested}; result: {last:?})");
}

fn python_with_openai() -> String {
    let out = Command::new(workspace_root().join("scripts/py-venv.sh")).output().expect("run scripts/py-venv.sh");
    assert!(out.status.success(), "scripts/py-venv.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string()
}

/// Runs `tests/python/<script>` (the `openai` package) against the gateway at `base` and returns
/// the JSON object it prints; on failure, panics with its stderr and `log()` (the gateway's log).
fn run_openai_script(python: &str, script: &str, base: &str, model: &str, log: &dyn Fn() -> String) -> serde_json::Value {
    let out = Command::new(python)
        .arg(workspace_root().join("tests/python").join(script))
        .args([&format!("{base}/v1"), model, TOKEN])
        .output()
        .expect("run the openai client");
    assert!(out.status.success(), "openai client failed:\n{}\ngateway log:\n{}", String::from_utf8_lossy(&out.stderr), log());
    serde_json::from_slice(&out.stdout).expect("client prints JSON")
}

/// A worker on the default model (batches of 8) and a gateway in a new sandbox `name`, then
/// `tests/python/<script>` against them: the sandbox, both processes (alive while the caller
/// holds them) and what the script printed.
fn run_openai_script_on_a_real_worker(name: &str, script: &str) -> (Sandbox, genq_tests::Worker, GatewayProcess, serde_json::Value) {
    let model = default_model();
    let python = python_with_openai();
    let sb = Sandbox::new(name);
    let worker = sb.worker(&["--model-path", model.to_str().unwrap_or_default(), "--max-batch-size", "8"]);
    let gw = GatewayProcess::start(&sb, &[], &[("GENQ__GATEWAY__API_KEYS", TOKEN)]);
    worker.wait_ready(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let seen = run_openai_script(&python, script, &gw.base, &sb.model, &|| gw.log_text());
    (sb, worker, gw, seen)
}

/// Log-probs through the `openai` package: generated tokens' (greedy: each is the most likely),
/// a prompt scored alone (`echo`, `max_tokens: 0`), a prompt echoed before its completion, chat.
fn check_logprobs(python: &str, base: &str, model: &str) {
    let seen = run_openai_script(python, "openai_logprobs.py", base, model, &String::new);
    let strings = |v: &serde_json::Value| -> Vec<String> { v.as_array().expect("a list").iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect() };
    let numbers = |v: &serde_json::Value| -> Vec<Option<f64>> { v.as_array().expect("a list").iter().map(|x| x.as_f64()).collect() };
    let most_likely = |top: &serde_json::Value| -> String {
        let top = top.as_object().expect("alternatives");
        top.iter().max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).expect("numbers")).map(|(t, _)| t.clone()).unwrap_or_default()
    };

    let g = &seen["generated"];
    let tokens = strings(&g["tokens"]);
    assert_eq!(tokens.len(), 6, "{g}");
    assert!(g["text"].as_str().is_some_and(|t| tokens.concat().starts_with(t)), "the tokens spell the text: {g}");
    for (i, token) in tokens.iter().enumerate() {
        let top = &g["top_logprobs"][i];
        assert!((1..=3).contains(&top.as_object().map_or(0, |o| o.len())), "{top}");
        assert_eq!(&most_likely(top), token, "greedy draws the most likely token: {g}");
        assert!(g["token_logprobs"][i].as_f64().is_some_and(|l| l <= 0.0), "{g}");
    }
    let offsets: Vec<u64> = g["text_offset"].as_array().expect("offsets").iter().filter_map(|o| o.as_u64()).collect();
    assert_eq!(offsets[0], 0);
    assert_eq!(offsets.len(), tokens.len());

    let s = &seen["scored"];
    assert_eq!(s["text"], "The capital of France is", "echo returns the prompt: {s}");
    assert_eq!(s["finish"], "length");
    let scored = numbers(&s["token_logprobs"]);
    assert_eq!(scored.len() as u64, s["prompt_tokens"].as_u64().unwrap_or(0), "one per prompt token: {s}");
    assert_eq!(scored[0], None, "the first token has no log-prob");
    assert!(scored[1..].iter().all(|l| l.is_some_and(|l| l < 0.0)), "{s}");
    assert_eq!(strings(&s["tokens"]).concat(), "The capital of France is");

    let e = &seen["echoed"];
    assert!(e["text"].as_str().is_some_and(|t| t.starts_with("The capital of France is") && t.len() > 24), "{e}");
    let echoed = numbers(&e["token_logprobs"]);
    assert_eq!(echoed.len(), scored.len() + 4, "prompt tokens, then 4 generated: {e}");
    for (i, (a, b)) in scored.iter().zip(&echoed).enumerate().skip(1) {
        assert!((a.unwrap_or(1.0) - b.unwrap_or(-1.0)).abs() < 1e-3, "prompt token {i}: scored {a:?}, echoed {b:?}");
    }

    let c = &seen["chat"];
    let entries = c["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 6, "{c}");
    for entry in entries {
        let token = entry["token"].as_str().unwrap_or_default();
        let bytes: Vec<u8> = entry["bytes"].as_array().expect("bytes").iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect();
        assert_eq!(bytes, token.as_bytes());
        assert_eq!(entry["top"].as_array().map(Vec::len), Some(2), "{entry}");
        assert_eq!(entry["top"][0][0], entry["token"], "greedy: {entry}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
async fn curl_and_the_openai_client_get_answers_from_a_real_worker() {
    let model = default_model();
    let python = python_with_openai();
    let sb = Sandbox::new("gateway");
    let worker = sb.worker(&["--model-path", model.to_str().unwrap_or_default(), "--weights", "q8_0", "--max-batch-size", "4"]);
    let gw = GatewayProcess::start(&sb, &["--request-timeout", "60", "--max-body-bytes", "65536"], &[("GENQ__GATEWAY__API_KEYS", TOKEN)]);
    let base = gw.base.clone();
    worker.wait_ready(Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!gw.log_text().contains(TOKEN), "the token must never be logged:\n{}", gw.log_text());

    // Health and auth: probes need no token; the API does.
    assert_eq!(curl(None, &[&format!("{base}/healthz")]).status, 200);
    let no_token = curl(None, &["-X", "POST", "--data-binary", r#"{"text":"hi"}"#, &format!("{base}/generate")]);
    assert_error(&no_token, 401, None, Some("invalid_api_key"));

    // The original API, exactly: text in; originalText and generatedText out, at most 50 tokens.
    let prompt = "The capital of France is";
    let reply = post_json(&base, "/generate", &format!(r#"{{"text":"{prompt}"}}"#));
    assert_eq!(reply.status, 200, "{reply:?}");
    let body = reply.json();
    let mut fields: Vec<&String> = body.as_object().expect("object").keys().collect();
    fields.sort();
    assert_eq!(fields, vec!["generatedText", "originalText"], "exactly the original fields: {body}");
    assert_eq!(body["originalText"], prompt);
    let generated = body["generatedText"].as_str().unwrap_or_default();
    assert!(generated.starts_with(prompt) && generated.len() > prompt.len(), "prompt plus a continuation: {body}");
    let id = reply.header("x-genq-job-id").expect("job id header");
    let stored: JobResult = sb.results().await.get(&id).await.expect("redis").expect("result");
    let total = stored.prompt_tokens.unwrap_or(99) + stored.completion_tokens.unwrap_or(99);
    assert!(total <= 50, "prompt + continuation within max_length=50: {stored:?}");
    assert_eq!(format!("{prompt}{}", stored.text.unwrap_or_default()), generated);
    // max_length counts the model's tokens, not bytes (SmolLM2 splits digits one by one): with
    // end-of-text held off, prompt plus continuation is exactly 50.
    for text in ["123456789012345678901234567890", "東京は日本の首都であり、世界最大の都市圏です。", "🎉🚀🌍✨🔥 emoji party 🎈🎁"] {
        let reply = post_json(&base, "/generate", &serde_json::json!({"text": text, "min_new_tokens": 50}).to_string());
        assert_eq!(reply.status, 200, "{reply:?}");
        let id = reply.header("x-genq-job-id").expect("job id header");
        let stored: JobResult = sb.results().await.get(&id).await.expect("redis").expect("result");
        let (p, c) = (stored.prompt_tokens.unwrap_or(0), stored.completion_tokens.unwrap_or(0));
        assert_eq!(p + c, 50, "{text:?}: {p} prompt + {c} new tokens");
    }

    // /generate errors: a rule broken (422), not the request's shape (400), too large (413).
    assert_error(&post_json(&base, "/generate", r#"{"text":"hi","top_p":5}"#), 422, Some("top_p"), None);
    assert_error(&post_json(&base, "/generate", r#"{"txt":"hi"}"#), 400, Some("txt"), None);
    assert_error(&post_json(&base, "/generate", "not json"), 400, None, Some("invalid_json"));
    let big = format!(r#"{{"text":"{}"}}"#, "a".repeat(100_000));
    assert_error(&post_json(&base, "/generate", &big), 413, None, Some("body_too_large"));

    // The openai package: completions and chat, plain and streamed, models, errors.
    let seen = run_openai_script(&python, "openai_client.py", &base, &sb.model, &|| gw.log_text());
    let c = &seen["completion"];
    assert!(c["id"].as_str().is_some_and(|s| s.starts_with("cmpl-")), "{c}");
    assert!(c["text"].as_str().is_some_and(|t| !t.trim().is_empty()), "a completion: {c}");
    let u = &c["usage"];
    assert_eq!(u["total"].as_u64(), Some(u["prompt"].as_u64().unwrap_or(0) + u["completion"].as_u64().unwrap_or(0)), "{u}");
    assert!(u["prompt"].as_u64() >= Some(4) && u["completion"].as_u64().is_some_and(|n| (1..=16).contains(&n)), "{u}");
    let s = &seen["completion_stream"];
    assert_eq!(s["text"], c["text"], "streamed text equals the plain one (same seed, greedy)");
    assert_eq!(s["usage"], c["usage"], "usage arrives in the last chunk");
    assert_eq!(s["finish"], c["finish"]);
    assert!(s["chunks"].as_u64() >= Some(3), "text arrives in pieces: {s}");
    let chat = &seen["chat"];
    assert_eq!(chat["role"], "assistant");
    assert!(chat["content"].as_str().is_some_and(|t| !t.trim().is_empty()), "{chat}");
    assert!(chat["usage"]["completion"].as_u64().is_some_and(|n| (1..=16).contains(&n)), "{chat}");
    let cs = &seen["chat_stream"];
    assert_eq!(cs["content"], chat["content"], "streamed chat equals the plain one");
    assert_eq!(cs["roles"], serde_json::json!(["assistant"]));
    assert_eq!(cs["finish"], chat["finish"]);
    let choices = &seen["choices"];
    assert_eq!(choices["indexes"], serde_json::json!([0, 1, 2]), "{choices}");
    assert!(choices["texts"].as_array().is_some_and(|t| t.iter().all(|t| t.as_str().is_some_and(|t| !t.is_empty()))), "{choices}");
    assert_eq!(choices["usage"]["prompt"], c["usage"]["prompt"], "the prompt is counted once: {choices}");
    assert!(choices["usage"]["completion"].as_u64().is_some_and(|n| (3..=15).contains(&n)), "three choices of 1 to 5 tokens: {choices}");
    assert_eq!(seen["chat_choices"]["indexes"], serde_json::json!([0, 1]), "{}", seen["chat_choices"]);
    let models = seen["models"].as_array().expect("models");
    assert!(models.iter().any(|m| m == sb.model.as_str()), "the live model is listed: {models:?}");
    assert!(!models.iter().any(|m| m == "no-such-model"));
    let errors = &seen["errors"];
    assert_eq!(errors["top_p"]["status"], 422, "{errors}");
    assert_eq!(errors["top_p"]["param"], "top_p", "{errors}");
    assert_eq!(errors["model"]["status"], 404, "{errors}");
    assert_eq!(errors["model"]["code"], "model_not_found", "{errors}");
    assert_eq!(errors["n"]["status"], 422, "above gateway.max_n: {errors}");
    assert_eq!(errors["n"]["param"], "n", "{errors}");
    assert_eq!(errors["auth"]["status"], 401, "{errors}");
    check_logprobs(&python, &base, &sb.model);
    let abandoned = seen["abandoned_stream_id"].as_str().and_then(|s| s.strip_prefix("chatcmpl-")).expect("stream id");
    assert_cancelled(&sb, abandoned, "a stream the client closed").await;

    // The asynchronous API: submit (202), poll, cancel (202, then 409), unknown job (404).
    let submitted = post_json(&base, "/v1/jobs", r#"{"prompt":"Say hi.","max_new_tokens":4,"temperature":0}"#);
    assert_eq!(submitted.status, 202, "{submitted:?}");
    let job = submitted.json()["id"].as_str().expect("id").to_string();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let got = curl(Some(TOKEN), &[&format!("{base}/v1/jobs/{job}")]);
        assert_eq!(got.status, 200, "{got:?}");
        if got.json()["status"] == "done" {
            assert!(got.json()["completion_tokens"].as_u64().is_some_and(|n| n >= 1), "{got:?}");
            break;
        }
        assert!(Instant::now() < until, "job {job} never finished: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let long = post_json(&base, "/v1/jobs", r#"{"prompt":"Write a long story.","max_new_tokens":2000,"min_new_tokens":2000}"#);
    let long_id = long.json()["id"].as_str().expect("id").to_string();
    let del = curl(Some(TOKEN), &["-X", "DELETE", &format!("{base}/v1/jobs/{long_id}")]);
    assert_eq!(del.status, 202, "{del:?}");
    assert_cancelled(&sb, &long_id, "DELETE /v1/jobs/{id}").await;
    assert_error(&curl(Some(TOKEN), &["-X", "DELETE", &format!("{base}/v1/jobs/{long_id}")]), 409, None, Some("job_final"));
    let unknown = curl(Some(TOKEN), &[&format!("{base}/v1/jobs/no-such-job")]);
    assert_error(&unknown, 404, None, Some("job_not_found"));
    assert!(unknown.json()["error"]["message"].as_str().unwrap_or_default().contains("no-such-job"), "{unknown:?}");

    // A client that hangs up on a synchronous request cancels its job.
    let hangup_id = format!("{}-hangup", sb.model);
    let body = format!(r#"{{"text":"Tell me everything about the sea.","max_new_tokens":2000,"min_new_tokens":2000,"id":"{hangup_id}"}}"#);
    let hung = curl(Some(TOKEN), &["--max-time", "3", "-X", "POST", "--data-binary", &body, &format!("{base}/generate")]);
    assert_eq!(hung.exit, Some(28), "curl gave up on its own: {hung:?}");
    assert_cancelled(&sb, &hangup_id, "a client that hung up").await;

    // Metrics: publishes by outcome, requests by route and status.
    let metrics = curl(None, &[&format!("{base}/metrics")]);
    assert!(metrics.body.contains("genq_published_total{outcome=\"confirmed\"}"), "{}", metrics.body);
    assert!(metrics.body.contains("genq_http_requests_total{route=\"/generate\",status=\"200\"} 4"), "{}", metrics.body);
    assert!(metrics.body.contains("genq_http_requests_total{route=\"/v1/jobs/{id}\",status=\"404\"} 1"), "{}", metrics.body);
    drop(gw);
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
async fn the_openai_client_runs_batches_through_files_and_the_batch_api() {
    let (sb, worker, gw, seen) = run_openai_script_on_a_real_worker("batches", "openai_batch.py");

    assert_eq!(seen["file"]["purpose"], "batch", "{}", seen["file"]);
    assert_eq!(seen["created_status"], "in_progress");
    let b = &seen["completions"];
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(b["counts"], serde_json::json!({ "total": 13, "completed": 12, "failed": 1 }), "{b}");
    assert_eq!(b["metadata"], serde_json::json!({ "run": "ci" }));
    assert!(b["completed_at"].as_u64() >= b["created_at"].as_u64(), "{b}");
    let output = seen["output"].as_array().expect("output lines");
    let custom: Vec<&str> = output.iter().map(|l| l["custom_id"].as_str().unwrap_or_default()).collect();
    assert_eq!(custom, (0..12).map(|i| format!("req-{i}")).collect::<Vec<_>>(), "one line per request, in input order");
    for l in output {
        let body = &l["response"]["body"];
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        assert_eq!(body["object"], "text_completion", "{l}");
        assert!(body["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()), "{l}");
        assert_eq!(body["choices"][0]["logprobs"]["tokens"].as_array().map(Vec::len), body["usage"]["completion_tokens"].as_u64().map(|n| n as usize), "{l}");
        assert_eq!(l["error"], serde_json::Value::Null);
    }
    let errors = seen["errors"].as_array().expect("error lines");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["custom_id"], "bad-top-p");
    assert!(errors[0]["error"]["message"].as_str().is_some_and(|m| m.contains("top_p")), "{errors:?}");

    let chat = &seen["chat"];
    assert_eq!((chat["status"].as_str(), chat["endpoint"].as_str()), (Some("completed"), Some("/v1/chat/completions")), "{chat}");
    let chat_out = seen["chat_output"].as_array().expect("chat lines");
    assert_eq!(chat_out.len(), 4);
    assert!(chat_out.iter().all(|l| l["response"]["body"]["choices"][0]["message"]["role"] == "assistant"), "{chat_out:?}");
    let two = chat_out.iter().find(|l| l["custom_id"] == "chat-n2").expect("the n = 2 line");
    let indexes: Vec<u64> = two["response"]["body"]["choices"].as_array().expect("choices").iter().filter_map(|c| c["index"].as_u64()).collect();
    assert_eq!(indexes, vec![0, 1], "two choices from one job: {two}");

    let cancelled = &seen["cancelled"];
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["counts"]["total"], 8);
    assert_eq!(cancelled["counts"]["completed"].as_u64().unwrap_or(99) + cancelled["counts"]["failed"].as_u64().unwrap_or(99), 8, "{cancelled}");
    assert!(cancelled["counts"]["failed"].as_u64() >= Some(1), "cancelled at once, so most never ran: {cancelled}");

    let listed = seen["listed"].as_array().expect("listed");
    for id in [&b["id"], &chat["id"], &cancelled["id"]] {
        assert!(listed.contains(id), "every batch is listed, page after page: {listed:?}");
    }
    assert!(seen["files_listed"].as_array().is_some_and(|f| f.contains(&seen["file"]["id"])), "{}", seen["files_listed"]);
    let refused = &seen["refused"];
    assert_eq!(refused["duplicate"]["status"], 422, "{refused}");
    assert!(refused["duplicate"]["message"].as_str().is_some_and(|m| m.contains("\"same\" appears twice")), "{refused}");
    assert_eq!(refused["endpoint"]["param"], "endpoint", "{refused}");
    assert_eq!(refused["unknown_batch"]["status"], 404, "{refused}");
    assert_eq!(seen["deleted"], true);
    assert_eq!(seen["after_delete"]["status"], 404);

    // Every request of the batches ran as a job with a final result in Redis.
    let results = sb.results().await;
    let first = b["id"].as_str().expect("id");
    let r: JobResult = results.get(&format!("{first}.0")).await.expect("redis").expect("the first request's job");
    assert_eq!(r.status, Some(JobStatus::Done));

    // The same from the command line, without the gateway.
    let input = scratch_dir().join(format!("{}-batch.jsonl", sb.model));
    let lines: Vec<String> = (0..3)
        .map(|i| format!(r#"{{"custom_id":"cli-{i}","method":"POST","url":"/v1/completions","body":{{"prompt":"Hello {i}","max_tokens":2}}}}"#))
        .chain([r#"{"custom_id":"cli-bad","method":"POST","url":"/v1/completions","body":{"prompt":""}}"#.to_string()])
        .collect();
    std::fs::write(&input, lines.join("\n")).expect("write the batch file");
    let created = sb.genq().args(["batch", "create", input.to_str().unwrap_or_default(), "--wait"]).output().expect("run genq batch create");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let batch: serde_json::Value = serde_json::from_slice(&created.stdout).expect("a batch object");
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"], serde_json::json!({ "total": 4, "completed": 3, "failed": 1 }), "{batch}");
    let id = batch["id"].as_str().expect("id");
    let status = sb.genq().args(["batch", "status", id]).output().expect("run genq batch status");
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&status.stdout).expect("json")["output_file_id"], batch["output_file_id"]);
    let results = sb.genq().args(["batch", "results", id]).output().expect("run genq batch results");
    let text = String::from_utf8_lossy(&results.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.contains(r#""status_code":200"#)), "{text}");
    let errors = sb.genq().args(["batch", "results", id, "--errors"]).output().expect("run genq batch results --errors");
    let text = String::from_utf8_lossy(&errors.stdout);
    assert!(text.contains("cli-bad") && text.contains("prompt"), "the refused line names its field: {text}");
    drop(gw);
    drop(worker);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_answers_503_not_a_hang() {
    let sb = Sandbox::new("gateway-down");
    // Nothing listens on port 1: Redis is "down".
    let mut flags = sb.flags();
    let at = flags.iter().position(|f| f == "--redis-url").expect("flag") + 1;
    flags[at] = "redis://127.0.0.1:1".into();
    let log = scratch_dir().join(format!("{}-gateway.log", sb.model));
    let mut child = Command::new(bin("genq"))
        .args(&flags)
        .args(["--model", &sb.model, "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn genq serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut base = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(rest) = line.split("listening on ").nth(1) {
            base = rest.split_whitespace().next().unwrap_or_default().to_string();
            break;
        }
    }
    assert!(!base.is_empty(), "genq serve did not start (log {})", log.display());
    let started = Instant::now();
    let reply = curl(None, &["--max-time", "30", "-X", "POST", "--data-binary", r#"{"text":"hi"}"#, &format!("{base}/generate")]);
    assert_error(&reply, 503, None, Some("redis_unavailable"));
    assert!(started.elapsed() < Duration::from_secs(15), "503 comes quickly");
    assert_eq!(curl(None, &[&format!("{base}/healthz")]).status, 503);
    let _ = child.kill();
    let _ = child.wait();
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_worker_a_full_queue_is_429_and_a_wait_past_the_timeout_is_504() {
    let sb = Sandbox::new("gateway-full");
    // The gateway declares this sandbox's queues holding at most two ready jobs; no worker runs.
    let gw = GatewayProcess::start(&sb, &["--request-timeout", "1"], &[("GENQ__QUEUE__MAX_LENGTH", "2")]);
    let base = gw.base.clone();
    let models = curl(None, &[&format!("{base}/v1/models")]);
    assert_eq!(models.json()["data"], serde_json::json!([]), "no worker, no model: {models:?}");

    let started = Instant::now();
    let slow = curl(None, &["-X", "POST", "--data-binary", r#"{"text":"hi","id":"waits-in-vain"}"#, &format!("{base}/generate")]);
    assert_error(&slow, 504, None, Some("timeout"));
    assert!(started.elapsed() < Duration::from_secs(10), "the timeout is the setting, 1 s");
    let keys = KeySchema::new(sb.prefix.clone());
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let until = Instant::now() + Duration::from_secs(5);
    while redis::cmd("HEXISTS").arg(keys.job("waits-in-vain")).arg(CANCEL_FIELD).query_async::<i64>(&mut conn).await.expect("HEXISTS") == 0 {
        assert!(Instant::now() < until, "a request that timed out cancels its job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One job is queued already; publish until the queue refuses (a quorum queue may take one
    // job over its limit before it does).
    let mut accepted = 1;
    let full = loop {
        let r = curl(None, &["-X", "POST", "--data-binary", r#"{"prompt":"a"}"#, &format!("{base}/v1/jobs")]);
        if r.status != 202 {
            break r;
        }
        accepted += 1;
        assert!(accepted <= 3, "the queue holds at most its max length (2) plus one");
    };
    assert_error(&full, 429, None, Some("queue_full"));
    let metrics = curl(None, &[&format!("{base}/metrics")]);
    assert!(metrics.body.contains("genq_published_total{outcome=\"nacked\"} 1"), "{}", metrics.body);
    drop(gw);
    sb.cleanup().await;
}

/// `text` parses as JSON and is valid under `schema`; panics naming `what` otherwise.
fn assert_valid_json(what: &str, text: &str, schema: &serde_json::Value) {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {text:?} is not JSON: {e}"));
    let validator = jsonschema::validator_for(schema).expect("the schema compiles");
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {text} breaks {schema}: {errors:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
async fn the_openai_client_gets_structured_output_valid_under_its_schema() {
    let (sb, worker, gw, seen) = run_openai_script_on_a_real_worker("structured", "openai_structured.py");

    let schemas = seen["schemas"].as_array().expect("schemas");
    let chat = seen["chat"].as_array().expect("chat answers");
    assert_eq!(chat.len(), schemas.len());
    for (i, (answer, schema)) in chat.iter().zip(schemas).enumerate() {
        assert_eq!(answer["finish"], "stop", "chat {i}: {answer}");
        assert_valid_json(&format!("chat {i}"), answer["text"].as_str().unwrap_or_default(), schema);
    }
    let object = serde_json::json!({"type": "object"});
    for key in ["chat_object", "completion_object"] {
        assert_eq!(seen[key]["finish"], "stop", "{}", seen[key]);
        assert_valid_json(key, seen[key]["text"].as_str().unwrap_or_default(), &object);
    }
    let bad = &seen["uncompilable"];
    assert_eq!((bad["status"].as_u64(), bad["param"].as_str()), (Some(422), Some("response_format")), "{bad}");
    assert!(bad["message"].as_str().is_some_and(|m| m.contains("cannot be compiled") && m.contains("missing")), "{bad}");

    let batch = &seen["batch"];
    assert_eq!(batch["status"], "completed", "{batch}");
    let lines = batch["lines"].as_array().expect("output lines");
    assert_eq!(lines.len(), schemas.len(), "{batch}");
    for (i, (line, schema)) in lines.iter().zip(schemas).enumerate() {
        assert_eq!(line["custom_id"], format!("chat-{i}"));
        assert_eq!(line["finish"], "stop", "{line}");
        assert_valid_json(&format!("batch line {i}"), line["text"].as_str().unwrap_or_default(), schema);
    }
    drop(gw);
    drop(worker);
    sb.cleanup().await;
}
