//! Jobs with several samples (`n`): the first sample is the job's own sequence, the others are
//! sibling sequences that wait while it prefills the prompt, then start from a copy of its
//! cache and its last prompt row, so the prompt is computed once. [`Samples`] keeps the groups
//! and folds the siblings' updates into the job's, so the caller sees one sequence per job.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use genq_shared::result::Choice;

use super::super::{SeqDone, SeqId, SeqUpdate};

/// Sibling ids start here, far above the caller's ids.
const FIRST_SIBLING: SeqId = 1 << 62;

/// One job's samples.
#[derive(Default)]
struct Group {
    /// The siblings, in sample order (2nd sample first).
    siblings: Vec<SeqId>,
    /// Text each sibling generated so far.
    texts: Vec<String>,
    /// Tokens each sibling generated so far.
    tokens: Vec<u64>,
    /// Each sibling once finished.
    finished: Vec<Option<Choice>>,
    /// The first sample's end, held until every sibling has finished.
    held: Option<SeqDone>,
    /// The first sibling's failure, if one failed: the job fails with it.
    error: Option<String>,
}

impl Group {
    fn complete(&self) -> bool {
        self.held.is_some() && self.finished.iter().all(Option::is_some)
    }
}

/// The groups of the running jobs with several samples.
#[derive(Default)]
pub(super) struct Samples {
    groups: HashMap<SeqId, Group>,
    /// Sibling id -> its job's id and its place among the siblings.
    sibling_of: HashMap<SeqId, (SeqId, usize)>,
    next_sibling: SeqId,
}

impl Samples {
    /// Ids for `count` siblings of job `id` (none when `count` is 0).
    pub(super) fn add(&mut self, id: SeqId, count: usize) -> Vec<SeqId> {
        if count == 0 {
            return Vec::new();
        }
        let siblings: Vec<SeqId> = (0..count)
            .map(|_| {
                self.next_sibling += 1;
                FIRST_SIBLING + self.next_sibling
            })
            .collect();
        for (place, &s) in siblings.iter().enumerate() {
            self.sibling_of.insert(s, (id, place));
        }
        let group = Group {
            siblings: siblings.clone(),
            texts: vec![String::new(); count],
            tokens: vec![0; count],
            finished: vec![None; count],
            held: None,
            error: None,
        };
        self.groups.insert(id, group);
        siblings
    }

    /// Whether no job has several samples.
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The job a sequence belongs to: its own id, or its job's for another sample.
    pub(super) fn job_of(&self, id: SeqId) -> SeqId {
        self.sibling_of.get(&id).map_or(id, |&(job, _)| job)
    }

    /// The siblings of job `id` (empty for a job with one sample).
    pub(super) fn siblings(&self, id: SeqId) -> &[SeqId] {
        self.groups.get(&id).map_or(&[], |g| &g.siblings)
    }

    /// Forgets job `id`'s group; returns its siblings, for the caller to drop.
    pub(super) fn remove(&mut self, id: SeqId) -> Vec<SeqId> {
        let Some(group) = self.groups.remove(&id) else { return Vec::new() };
        for s in &group.siblings {
            self.sibling_of.remove(s);
        }
        group.siblings
    }

    /// Turns one step's updates (the siblings' among them) into one update per job: the first
    /// sample's text, the tokens of all samples, and `done` once every sample has finished.
    pub(super) fn fold(&mut self, updates: Vec<SeqUpdate>) -> Vec<SeqUpdate> {
        if self.groups.is_empty() {
            return updates;
        }
        let mut out: Vec<SeqUpdate> = Vec::with_capacity(updates.len());
        let mut sibling_tokens: BTreeMap<SeqId, usize> = BTreeMap::new();
        let mut touched: BTreeSet<SeqId> = BTreeSet::new();
        for mut u in updates {
            if let Some(&(job, place)) = self.sibling_of.get(&u.id) {
                let group = self.groups.get_mut(&job).expect("a sibling's group lives as long as it");
                *sibling_tokens.entry(job).or_default() += u.new_tokens;
                group.tokens[place] += u.new_tokens as u64;
                group.texts[place].push_str(&u.text);
                if let Some(done) = u.done {
                    if let Some(e) = done.error {
                        group.error.get_or_insert(e);
                    }
                    group.finished[place] = Some(Choice {
                        text: std::mem::take(&mut group.texts[place]),
                        finish_reason: done.finish_reason,
                        completion_tokens: group.tokens[place],
                        token_logprobs: done.logprobs.generated,
                    });
                    self.sibling_of.remove(&u.id);
                }
                touched.insert(job);
                continue;
            }
            if let Some(group) = self.groups.get_mut(&u.id) {
                group.held = u.done.take().or(group.held.take());
                touched.insert(u.id);
            }
            out.push(u);
        }
        for job in touched {
            let at = match out.iter().position(|u| u.id == job) {
                Some(at) => at,
                None => {
                    out.push(SeqUpdate { id: job, text: String::new(), new_tokens: 0, done: None });
                    out.len() - 1
                }
            };
            out[at].new_tokens += sibling_tokens.get(&job).copied().unwrap_or(0);
            if self.groups.get(&job).is_some_and(Group::complete) {
                let group = self.groups.remove(&job).expect("checked");
                let mut done = group.held.expect("complete");
                done.error = done.error.or(group.error);
                done.samples = group.finished.into_iter().map(|c| c.expect("complete")).collect();
                out[at].done = Some(done);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genq_shared::FinishReason;

    fn update(id: SeqId, text: &str, done: Option<FinishReason>) -> SeqUpdate {
        SeqUpdate {
            id,
            text: text.into(),
            new_tokens: 1,
            done: done.map(|r| SeqDone { finish_reason: Some(r), score: None, logprobs: Default::default(), samples: Vec::new(), error: None }),
        }
    }

    #[test]
    fn a_job_ends_once_all_its_samples_have_and_lists_the_others() {
        let mut s = Samples::default();
        let sib = s.add(7, 2);
        assert_eq!(s.siblings(7), sib.as_slice());
        // Step 1: the job and both siblings draw a token; the job finishes first.
        let out = s.fold(vec![update(7, "a", Some(FinishReason::Length)), update(sib[0], "b", None), update(sib[1], "c", None)]);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].id, out[0].text.as_str(), out[0].new_tokens, out[0].done.is_some()), (7, "a", 3, false));
        // Step 2: only the siblings run (the job's sequence is gone); one finishes.
        let out = s.fold(vec![update(sib[0], "b", Some(FinishReason::Stop)), update(sib[1], "c", None)]);
        assert_eq!((out[0].id, out[0].text.as_str(), out[0].new_tokens, out[0].done.is_some()), (7, "", 2, false));
        // Step 3: the last sibling finishes: the job is done, with both others in order.
        let out = s.fold(vec![update(sib[1], "c", Some(FinishReason::Length))]);
        let done = out[0].done.as_ref().expect("done");
        assert_eq!(done.finish_reason, Some(FinishReason::Length));
        let samples: Vec<(&str, u64)> = done.samples.iter().map(|c| (c.text.as_str(), c.completion_tokens)).collect();
        assert_eq!(samples, vec![("bb", 2), ("ccc", 3)]);
        assert!(s.groups.is_empty() && s.sibling_of.is_empty());
    }

    #[test]
    fn jobs_with_one_sample_pass_through() {
        let mut s = Samples::default();
        assert!(s.add(1, 0).is_empty());
        let out = s.fold(vec![update(1, "x", Some(FinishReason::Stop))]);
        assert_eq!((out.len(), out[0].done.is_some()), (1, true));
    }
}
