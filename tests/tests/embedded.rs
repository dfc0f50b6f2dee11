//! `genq run`: the whole pipeline in one process, no services — the newcomer's first command.

use genq_shared::{JobResult, JobStatus};
use genq_tests::{bin, default_model, workspace_root};

fn run(args: &[&str]) -> (Vec<JobResult>, String, Option<i32>) {
    let out = std::process::Command::new(bin("genq")).arg("run").args(args).output().expect("run genq");
    let results = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    (results, String::from_utf8_lossy(&out.stderr).into_owned(), out.status.code())
}

#[test]
fn embedded_run_with_the_echo_engine_needs_no_services() {
    let examples = workspace_root().join("examples/prompts.jsonl");
    let (results, stderr, code) = run(&[examples.to_str().unwrap_or_default(), "--engine", "echo", "--amqp-url", "amqp://127.0.0.1:1/", "--redis-url", "redis://127.0.0.1:1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(results.len(), 7);
    assert_eq!(results[0].id, "capital");
    assert_eq!(results[0].text.as_deref(), Some(["The capital of France is"; 4].join(" ") + " The capital of France").as_deref());
    assert!(stderr.contains("jobs/s"), "throughput line: {stderr}");
}

#[test]
#[cfg_attr(not(genq_model), ignore = "the default model is missing: scripts/fetch-model.sh")]
fn embedded_run_on_the_default_model_prints_real_text() {
    let model = default_model();
    let examples = workspace_root().join("examples/prompts.jsonl");
    let (results, stderr, code) = run(&[examples.to_str().unwrap_or_default(), "--model-path", model.to_str().unwrap_or_default()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(results.len(), 7);
    assert!(results.iter().all(|r| r.status == Some(JobStatus::Done)), "{results:?}");
    assert!(results[0].text.as_deref().unwrap_or("").contains("Paris"), "{:?}", results[0]);
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn a_missing_model_says_how_to_fetch_it() {
    let examples = workspace_root().join("examples/prompts.jsonl");
    let (_, stderr, code) = run(&[examples.to_str().unwrap_or_default(), "--model-path", "models/nope.gguf"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("scripts/fetch-model.sh"), "{stderr}");
}
