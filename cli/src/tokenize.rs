//! `genq tokenize [--model-path PATH] [--special] TEXT...`: the token ids the engine feeds for
//! each text as a plain prompt (the model's own tokenizer and BOS rule, loaded without its
//! weights), one `{"text": ..., "ids": [...]}` line per input. `-` reads JSONL from standard
//! input: a JSON string or an object with a `text` string per line.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use genq_shared::settings::Overrides;
use genq_worker::engine::llama::tokenizer;

use super::CommonArgs;

/// Arguments of `genq tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// GGUF file or safetensors folder (`tokenizer.json`, `config.json`) [worker.model_path].
    #[arg(long)]
    model_path: Option<String>,
    /// Parse special tokens written in the text (`<|im_start|>` becomes its id), as the engine
    /// does for prompts; without it they are tokenized as plain text.
    #[arg(long)]
    special: bool,
    /// Texts to tokenize; `-` reads JSONL from standard input (a JSON string or
    /// `{"text": ...}` per line).
    #[arg(required = true)]
    texts: Vec<String>,
}

/// One output line: the text, then its ids.
#[derive(Serialize)]
struct Line<'a> {
    text: &'a str,
    ids: &'a [u32],
}

pub async fn run(common: &CommonArgs, args: TokenizeArgs) -> anyhow::Result<ExitCode> {
    let mut more = Overrides::default();
    more.set("worker.model_path", args.model_path.as_ref());
    let settings = common.settings(more)?;
    let path = Path::new(&settings.worker.model_path);
    if !path.exists() {
        bail!("model `{}` not found", path.display());
    }

    let mut texts = Vec::new();
    for arg in args.texts {
        if arg == "-" {
            texts.extend(read_jsonl(std::io::stdin().lock())?);
        } else {
            texts.push(arg);
        }
    }

    let (tok, special) = tokio::task::block_in_place(|| tokenizer::load(path))
        .with_context(|| format!("loading the tokenizer of `{}`", path.display()))?;
    let mut out = std::io::stdout().lock();
    for text in texts {
        let ids = tokenizer::prompt_ids(&tok, &special, &text, args.special)
            .with_context(|| format!("tokenizing {text:?}"))?;
        let line = serde_json::to_string(&Line { text: &text, ids: &ids })?;
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The texts of a JSONL stream; blank lines are skipped, anything else that is not a JSON
/// string or an object with a `text` string is an error naming its line.
fn read_jsonl(input: impl BufRead) -> anyhow::Result<Vec<String>> {
    let mut texts = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("reading standard input line {n}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("standard input line {n} is not JSON"))?;
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Object(mut o) => match o.remove("text") {
                Some(serde_json::Value::String(s)) => s,
                _ => bail!("standard input line {n}: the object has no `text` string"),
            },
            _ => bail!("standard input line {n}: expected a JSON string or {{\"text\": ...}}"),
        };
        texts.push(text);
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_takes_strings_and_text_objects_and_skips_blank_lines() {
        let input = "\"a\"\n\n{\"text\": \"b\", \"id\": 1}\n";
        assert_eq!(read_jsonl(input.as_bytes()).expect("valid"), ["a", "b"]);
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let err = read_jsonl("\"a\"\nnot json\n".as_bytes()).expect_err("bad line");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = read_jsonl("{\"prompt\": \"a\"}\n".as_bytes()).expect_err("no text");
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
    }
}
