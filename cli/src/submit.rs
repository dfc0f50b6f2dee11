//! `genq submit FILE.jsonl|-`: publish every job with confirms, print a summary, and with
//! `--wait` write every result as JSONL in input order.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use genq_producer::input::parse_jobs;
use genq_producer::{Producer, ResultClient};
use genq_shared::JobResult;

use super::CommonArgs;

/// Arguments of `genq submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// JSONL file of jobs, or `-` for standard input.
    file: String,
    /// After publishing, wait for every result and write them as JSONL.
    #[arg(long)]
    wait: bool,
    /// Where `--wait` writes results (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    /// With `--wait`, give up after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("read standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read {file}"))
    }
}

fn progress_bar(total: usize) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar
}

pub async fn run(common: &CommonArgs, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let settings = common.settings(Default::default())?;
    let text = read_input(&args.file)?;
    let (jobs, bad_lines) = parse_jobs(&text);
    let lines: Vec<usize> = jobs.iter().map(|(line, _)| *line).collect();
    let client = ResultClient::connect(&settings.redis.url, &settings.redis.key_prefix).await?.with_ttl(settings.redis.result_ttl_secs);
    let producer =
        Producer::connect(&settings.amqp.url, &settings.producer, &settings.queue).await?.with_results(client.clone());
    let bar = progress_bar(jobs.len());
    bar.set_message("confirmed");
    let started = Instant::now();
    let outcomes = producer.submit_many(jobs.into_iter().map(|(_, j)| j).collect(), |n| bar.set_position(n as u64)).await;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    producer.close().await;

    let mut ids = Vec::new();
    let mut rejected: Vec<(usize, String)> = bad_lines.iter().map(|e| (e.line, e.message.clone())).collect();
    for (line, outcome) in lines.iter().zip(&outcomes) {
        match outcome {
            Ok(id) => ids.push(id.clone()),
            Err(e) => rejected.push((*line, e.to_string())),
        }
    }
    rejected.sort();
    eprintln!(
        "published {} jobs, rejected {} ({:.0} jobs/s)",
        ids.len(),
        rejected.len(),
        ids.len() as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    for (line, why) in rejected.iter().take(20) {
        eprintln!("  line {line}: {why}");
    }
    if rejected.len() > 20 {
        eprintln!("  ... and {} more", rejected.len() - 20);
    }
    if !args.wait {
        for id in &ids {
            println!("{id}");
        }
    } else {
        let mut out: Box<dyn Write> = match &args.out {
            Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?)),
            None => Box::new(std::io::BufWriter::new(std::io::stdout())),
        };
        let timeout = args.timeout.map(|s| Duration::from_secs_f64(s.max(0.0)));
        let mut write_error = None;
        let mut unfinished = 0usize;
        client
            .wait_many(&ids, timeout, |r| {
                let record = match r {
                    Ok(r) => r,
                    Err(e) => {
                        unfinished += 1;
                        JobResult { error: Some(e.to_string()), ..JobResult::default() }
                    }
                };
                let line = serde_json::to_string(&record).unwrap_or_default();
                if let Err(e) = writeln!(out, "{line}") {
                    write_error = Some(e);
                }
            })
            .await?;
        out.flush()?;
        if let Some(e) = write_error {
            return Err(e).context("write results");
        }
        eprintln!("{} results written ({} not finished), {:.1} s in all", ids.len() - unfinished, unfinished, started.elapsed().as_secs_f64());
        if unfinished > 0 {
            return Ok(ExitCode::from(3));
        }
    }
    Ok(if rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
