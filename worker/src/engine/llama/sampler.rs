//! Per-sequence sampling: repetition penalty, banned tokens, then temperature / top-k / top-p with
//! an RNG seeded from the job and owned by the sequence, so a seeded job draws the same tokens
//! whatever else runs in the batch. Knows nothing of the model or of text.

use std::collections::HashSet;

use candle_core::{Device, Result, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use genq_shared::valid::SamplingParams;

/// Below this a temperature means greedy decoding.
const GREEDY_BELOW: f64 = 1e-7;

/// Chooses one sequence's next tokens.
pub(crate) struct Sampler {
    processor: LogitsProcessor,
    /// Greedy: the largest logit, found without copying the row.
    greedy: bool,
    repetition_penalty: f32,
    /// Tokens of the prompt and the generation, for the repetition penalty (empty when it is off).
    seen: HashSet<u32>,
}

/// Maps the job's parameters onto candle's sampling modes.
fn sampling_mode(params: &SamplingParams) -> Sampling {
    let temperature = params.temperature;
    if temperature < GREEDY_BELOW {
        return Sampling::ArgMax;
    }
    let top_p = (params.top_p < 1.0).then_some(params.top_p);
    match (params.top_k, top_p) {
        (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        (Some(k), None) => Sampling::TopK { k, temperature },
        (None, Some(p)) => Sampling::TopP { p, temperature },
        (None, None) => Sampling::All { temperature },
    }
}

impl Sampler {
    /// A sampler for `params`, its RNG seeded with `seed`.
    pub(crate) fn new(params: &SamplingParams, seed: u64) -> Self {
        Self {
            processor: LogitsProcessor::from_sampling(seed, sampling_mode(params)),
            greedy: matches!(sampling_mode(params), Sampling::ArgMax),
            repetition_penalty: params.repetition_penalty,
            seen: HashSet::new(),
        }
    }

    /// Records a token of the context (prompt or generated) for the repetition penalty.
    pub(crate) fn observe(&mut self, token: u32) {
        if self.repetition_penalty != 1.0 {
            self.seen.insert(token);
        }
    }

    /// Whether picks need no state (greedy without a repetition penalty).
    pub(crate) fn is_stateless(&self) -> bool {
        self.greedy && self.repetition_penalty == 1.0
    }

    /// The token [`Sampler::sample`] will pick, when that needs no state (greedy without a
    /// repetition penalty): `None` otherwise. Many rows can be read at once this way.
    pub(crate) fn stateless_pick(&self, logits: &[f32], banned: &[u32]) -> Option<Result<u32>> {
        self.is_stateless().then(|| argmax(logits, banned))
    }

    /// Picks the next token from `logits`; `banned` tokens are never chosen.
    pub(crate) fn sample(&mut self, logits: &[f32], banned: &[u32]) -> Result<u32> {
        if let Some(pick) = self.stateless_pick(logits, banned) {
            return pick;
        }
        let mut logits = logits.to_vec();
        let penalty = self.repetition_penalty;
        if penalty != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    // As in candle's `apply_repeat_penalty` and HF's processor.
                    *l = if *l >= 0.0 {
                        *l / penalty
                    } else {
                        *l * penalty
                    };
                }
            }
        }
        for &t in banned {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let n = logits.len();
        self.processor
            .sample(&Tensor::from_vec(logits, n, &Device::Cpu)?)
    }
}

/// The index of the largest logit, banned ones counting as minus infinity: the first of equal
/// ones, as candle's `argmax` picks (a row starting with NaN answers 0, as there).
fn argmax(logits: &[f32], banned: &[u32]) -> Result<u32> {
    let Some(&first) = logits.first() else {
        candle_core::bail!("sampling from an empty row of logits");
    };
    if first.is_nan() && !banned.contains(&0) {
        return Ok(0);
    }
    if banned.is_empty() {
        // The largest value (NaN ignored, as `>` ignores it), in sixteen lanes that vectorize,
        // then the first index holding it.
        let mut lanes = [f32::NEG_INFINITY; 16];
        let chunks = logits.chunks_exact(16);
        let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for c in chunks {
            for (m, &v) in lanes.iter_mut().zip(c) {
                *m = m.max(v);
            }
        }
        let max = lanes.iter().fold(rest, |m, &v| m.max(v));
        return Ok(logits.iter().position(|&v| v == max).unwrap_or(0) as u32);
    }
    let allowed = |i: usize| !banned.contains(&(i as u32));
    let mut best = (0, if allowed(0) { first } else { f32::NEG_INFINITY });
    for (i, &v) in logits.iter().enumerate().skip(1) {
        if v > best.1 && allowed(i) {
            best = (i, v);
        }
    }
    Ok(best.0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        temperature: f64,
        top_k: Option<usize>,
        top_p: f64,
        repetition_penalty: f32,
    ) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed: None,
        }
    }

    #[test]
    fn zero_temperature_picks_the_largest_logit() {
        let mut s = Sampler::new(&params(0.0, None, 1.0, 1.0), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[]).ok(), Some(1));
    }

    #[test]
    fn banned_token_is_never_chosen() {
        let mut s = Sampler::new(&params(0.0, None, 1.0, 1.0), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[1]).ok(), Some(2));
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(&params(0.0, None, 1.0, 2.0), 1);
        s.observe(1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.0], &[]).ok(), Some(2));
    }

    #[test]
    fn same_seed_draws_the_same_tokens() {
        let draw = |seed| {
            let mut s = Sampler::new(&params(1.0, Some(5), 0.9, 1.0), seed);
            (0..20)
                .map(|_| {
                    s.sample(&[1.0, 1.1, 0.9, 1.05, 0.2, 0.3], &[])
                        .unwrap_or(99)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn greedy_picks_what_candles_argmax_picks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for case in 0..200 {
            // Few distinct values: ties are common; sometimes the first or the best one banned.
            let mut row: Vec<f32> = (0..50).map(|_| rng.random_range(0..6) as f32).collect();
            if case % 7 == 0 {
                row[rng.random_range(0..50)] = f32::NAN;
            }
            let banned: Vec<u32> = match case % 3 {
                0 => vec![],
                1 => vec![0],
                _ => vec![rng.random_range(0..50), rng.random_range(0..50)],
            };
            let mut masked = row.clone();
            for &b in &banned {
                masked[b as usize] = f32::NEG_INFINITY;
            }
            let want = LogitsProcessor::from_sampling(1, Sampling::ArgMax)
                .sample(&Tensor::from_vec(masked, 50, &Device::Cpu).expect("tensor"))
                .expect("candle");
            let mut s = Sampler::new(&params(0.0, None, 1.0, 1.0), 1);
            assert_eq!(s.sample(&row, &banned).ok(), Some(want), "{row:?} banned {banned:?}");
        }
        assert!(argmax(&[], &[]).is_err());
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(&params(1.5, Some(1), 1.0, 1.0), 3);
        for _ in 0..10 {
            assert_eq!(s.sample(&[0.5, 0.4, 0.6, 0.1], &[]).ok(), Some(2));
        }
    }
}
