//! Reading job files: JSONL where each line is a job object, a JSON string (a bare prompt), or
//! plain text (also a bare prompt). Blank lines are skipped.

use genq_shared::JobRequest;

/// One line that could not be read as a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses one line; `None` for a blank line.
pub fn parse_line(line: &str) -> Option<Result<JobRequest, String>> {
    let t = line.trim();
    if t.is_empty() {
        return None;
    }
    Some(if t.starts_with('{') {
        serde_json::from_str::<JobRequest>(t).map_err(|e| e.to_string())
    } else if t.starts_with('"') {
        serde_json::from_str::<String>(t).map(JobRequest::prompt).map_err(|e| e.to_string())
    } else {
        Ok(JobRequest::prompt(t))
    })
}

/// Parses a whole file: every job in order, with the line it came from, and the bad lines.
pub fn parse_jobs(text: &str) -> (Vec<(usize, JobRequest)>, Vec<LineError>) {
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            None => {}
            Some(Ok(job)) => jobs.push((i + 1, job)),
            Some(Err(message)) => errors.push(LineError { line: i + 1, message }),
        }
    }
    (jobs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_may_be_objects_strings_or_plain_prompts() {
        let (jobs, errors) = parse_jobs("{\"prompt\":\"a\",\"max_new_tokens\":3}\n\n\"b \\\"q\\\"\"\nplain c\n{\"prompt\":1}\n");
        let prompts: Vec<_> = jobs.iter().map(|(_, j)| j.prompt.clone().unwrap_or_default()).collect();
        assert_eq!(prompts, vec!["a", "b \"q\"", "plain c"]);
        assert_eq!(jobs[0].1.max_new_tokens, Some(3));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 5);
    }
}
