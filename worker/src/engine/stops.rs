//! Text-level stop strings: finds the first stop in generated text and holds back a tail that
//! could still grow into one, so no stop text is ever emitted and none is cut mid-character.

/// Tracks the generated text of one sequence against its stop strings.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

/// What the matcher decided after new text arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StopCheck {
    /// Text now safe to emit.
    pub emit: String,
    /// A stop string matched; the sequence is finished and the stop text is dropped.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (may be empty).
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self { stops, text: String::new(), emitted: 0 }
    }

    /// Adds `piece` of generated text. When `armed` is false (below `min_new_tokens`) stops are
    /// not searched for, but text that could start one is still held back.
    pub(crate) fn push(&mut self, piece: &str, armed: bool) -> StopCheck {
        self.text.push_str(piece);
        if armed {
            if let Some(at) = self.first_stop() {
                let emit = self.text[self.emitted..at].to_string();
                self.emitted = at;
                self.text.truncate(at);
                return StopCheck { emit, stopped: true };
            }
        }
        let safe = self.safe_len();
        let emit = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        StopCheck { emit, stopped: false }
    }

    /// Emits whatever is held back (the sequence ended for another reason).
    pub(crate) fn flush(&mut self) -> String {
        let rest = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        rest
    }

    /// All text accepted so far (without any stop text).
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    fn first_stop(&self) -> Option<usize> {
        // Only a stop that overlaps text not yet emitted can be new.
        let from = self.emitted.saturating_sub(self.stops.iter().map(|s| s.len()).max().unwrap_or(0));
        let from = (0..=from).rev().find(|&i| self.text.is_char_boundary(i)).unwrap_or(0);
        self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min()
    }

    /// Length of the prefix that cannot be the start of any stop string.
    fn safe_len(&self) -> usize {
        let mut safe = self.text.len();
        for stop in &self.stops {
            for k in (1..stop.len()).rev() {
                if self.text.len() >= k
                    && self.text.is_char_boundary(self.text.len() - k)
                    && stop.is_char_boundary(k)
                    && self.text.ends_with(&stop[..k])
                {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        safe.max(self.emitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let c = m.push(p, true);
            out.push_str(&c.emit);
            if c.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_tokens_is_cut_without_its_text() {
        assert_eq!(run(&["\n\n"], &["Hello", "\n", "\nWorld"]), ("Hello".into(), true));
        assert_eq!(run(&["END"], &["abc E", "N", "D more"]), ("abc ".into(), true));
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_complete() {
        assert_eq!(run(&["END"], &["a E", "x"]), ("a Ex".into(), false));
    }

    #[test]
    fn no_stops_passes_text_through() {
        assert_eq!(run(&[], &["é", "ü"]), ("éü".into(), false));
    }

    #[test]
    fn unarmed_matcher_ignores_stops_until_armed() {
        let mut m = StopMatcher::new(vec!["x".into()]);
        let c = m.push("axb", false);
        assert!(!c.stopped);
        let c = m.push("cx", true);
        assert!(c.stopped);
        assert_eq!(m.text(), "axbc");
    }

    #[test]
    fn multibyte_stop_never_splits_a_character() {
        assert_eq!(run(&["日本"], &["a日", "本b"]), ("a".into(), true));
    }
}
