//! A bulk message's delivery split into one settler per job. The message is settled once every
//! job's settler has been: requeued if any job asked for it (a redelivery reruns only the jobs not
//! final by then), else acked. A job to dead-letter (poison) is published into `genq.dead` on its
//! own where the source can, and counts as acked; where it cannot, the whole message is
//! dead-lettered once the others are settled.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::{DeadLetterJob, Settle, SettleFuture, Settlement};

/// What the parts have decided so far, and the message's own settler until the last part.
struct Progress {
    left: usize,
    requeue: bool,
    dead_letter: bool,
    message: Option<Box<dyn Settle>>,
}

impl Progress {
    /// Records one part's settlement; after the last part, the message's settler and how to
    /// settle it.
    fn record(&mut self, how: Settlement) -> Option<(Box<dyn Settle>, Settlement)> {
        match how {
            Settlement::Ack => {}
            Settlement::Requeue => self.requeue = true,
            Settlement::DeadLetter => self.dead_letter = true,
        }
        self.left = self.left.saturating_sub(1);
        if self.left > 0 {
            return None;
        }
        let how = if self.requeue {
            Settlement::Requeue
        } else if self.dead_letter {
            Settlement::DeadLetter
        } else {
            Settlement::Ack
        };
        self.message.take().map(|m| (m, how))
    }
}

struct Shared {
    progress: Mutex<Progress>,
    dead_letters: Option<Arc<dyn DeadLetterJob>>,
    /// The message body, which holds each job's JSON.
    body: Vec<u8>,
}

/// The settler of one job of a bulk message: its id and the bytes of the body that hold its JSON.
struct Part {
    shared: Arc<Shared>,
    id: String,
    span: Range<usize>,
}

impl Settle for Part {
    fn settle(self: Box<Self>, how: Settlement) -> SettleFuture {
        Box::pin(async move {
            let Part { shared, id, span } = *self;
            let how = match (how, &shared.dead_letters) {
                (Settlement::DeadLetter, Some(dead)) => match dead.dead_letter(id.clone(), shared.body[span].to_vec()).await {
                    Ok(()) => Settlement::Ack,
                    Err(e) => {
                        tracing::warn!(job = %id, error = %e, "cannot dead-letter a job of a bulk message alone; its whole message is dead-lettered");
                        Settlement::DeadLetter
                    }
                },
                (how, _) => how,
            };
            let last = shared.progress.lock().map_err(|_| super::SourceError("bulk settlement state poisoned".into()))?.record(how);
            match last {
                Some((message, how)) => message.settle(how).await,
                None => Ok(()),
            }
        })
    }
}

/// Splits the settler of a bulk message into one settler per job, in the order of `jobs` (each a
/// job's id and the bytes of `body` that hold its JSON, kept to dead-letter it alone).
pub(crate) fn split(
    message: Box<dyn Settle>,
    body: Vec<u8>,
    jobs: Vec<(String, Range<usize>)>,
    dead_letters: Option<Arc<dyn DeadLetterJob>>,
) -> Vec<Box<dyn Settle>> {
    let progress = Progress { left: jobs.len(), requeue: false, dead_letter: false, message: Some(message) };
    let shared = Arc::new(Shared { progress: Mutex::new(progress), dead_letters, body });
    jobs.into_iter().map(|(id, span)| Box::new(Part { shared: shared.clone(), id, span }) as Box<dyn Settle>).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceError;

    /// Records how the message was settled.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<Settlement>>>);

    impl Settle for Log {
        fn settle(self: Box<Self>, how: Settlement) -> SettleFuture {
            self.0.lock().expect("log").push(how);
            Box::pin(async { Ok(()) })
        }
    }

    /// Dead-letters jobs into a list (id and JSON), or fails every time.
    struct Dead {
        published: Mutex<Vec<(String, Vec<u8>)>>,
        fail: bool,
    }

    impl DeadLetterJob for Dead {
        fn dead_letter(&self, id: String, body: Vec<u8>) -> SettleFuture {
            self.published.lock().expect("dead").push((id, body));
            let fail = self.fail;
            Box::pin(async move { if fail { Err(SourceError("broker gone".into())) } else { Ok(()) } })
        }
    }

    /// A body of `n` jobs `{"id":"j<i>"}` (not a real bulk envelope: only the spans matter here),
    /// and each job's id and span.
    fn jobs(n: usize) -> (Vec<u8>, Vec<(String, Range<usize>)>) {
        let mut body = Vec::new();
        let mut spans = Vec::new();
        for i in 0..n {
            let start = body.len();
            body.extend_from_slice(format!(r#"{{"id":"j{i}"}}"#).as_bytes());
            spans.push((format!("j{i}"), start..body.len()));
        }
        (body, spans)
    }

    fn split_jobs(log: &Log, n: usize, dead: Option<Arc<dyn DeadLetterJob>>) -> Vec<Box<dyn Settle>> {
        let (body, spans) = jobs(n);
        split(Box::new(log.clone()), body, spans, dead)
    }

    async fn settle_all(parts: Vec<Box<dyn Settle>>, hows: &[Settlement], log: &Log) -> Vec<Vec<Settlement>> {
        let mut seen = Vec::new();
        for (part, how) in parts.into_iter().zip(hows) {
            part.settle(*how).await.expect("settle");
            seen.push(log.0.lock().expect("log").clone());
        }
        seen
    }

    #[tokio::test]
    async fn the_message_is_acked_only_after_its_last_job() {
        let log = Log::default();
        let parts = split_jobs(&log, 3, None);
        let seen = settle_all(parts, &[Settlement::Ack; 3], &log).await;
        assert_eq!(seen, vec![vec![], vec![], vec![Settlement::Ack]]);
    }

    #[tokio::test]
    async fn one_requeued_job_requeues_the_message_once_all_are_settled() {
        let log = Log::default();
        let parts = split_jobs(&log, 3, None);
        let seen = settle_all(parts, &[Settlement::Ack, Settlement::Requeue, Settlement::Ack], &log).await;
        assert_eq!(seen, vec![vec![], vec![], vec![Settlement::Requeue]]);
    }

    #[tokio::test]
    async fn a_poison_job_is_dead_lettered_alone_and_the_message_acked() {
        let log = Log::default();
        let dead = Arc::new(Dead { published: Mutex::default(), fail: false });
        let parts = split_jobs(&log, 3, Some(dead.clone()));
        let seen = settle_all(parts, &[Settlement::Ack, Settlement::DeadLetter, Settlement::Ack], &log).await;
        assert_eq!(seen.last(), Some(&vec![Settlement::Ack]));
        assert_eq!(*dead.published.lock().expect("dead"), vec![("j1".to_string(), br#"{"id":"j1"}"#.to_vec())]);
    }

    #[tokio::test]
    async fn without_a_way_to_dead_letter_one_job_the_whole_message_is() {
        let log = Log::default();
        let dead = Arc::new(Dead { published: Mutex::default(), fail: true });
        let parts = split_jobs(&log, 2, Some(dead));
        let seen = settle_all(parts, &[Settlement::DeadLetter, Settlement::Ack], &log).await;
        assert_eq!(seen.last(), Some(&vec![Settlement::DeadLetter]));
        let log = Log::default();
        let parts = split_jobs(&log, 2, None);
        let seen = settle_all(parts, &[Settlement::Ack, Settlement::DeadLetter], &log).await;
        assert_eq!(seen.last(), Some(&vec![Settlement::DeadLetter]));
    }
}
