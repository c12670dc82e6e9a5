//! Stop sequences applied to the streamed text.
//!
//! mistral.rs checks stop strings only after it has already streamed the token that completes
//! them (and one more), so a client would see the stop text. The filter holds back any tail of
//! the text that could still grow into a stop sequence, releases it once it cannot, and cuts
//! the text where a stop sequence begins.

/// Streaming stop-sequence matcher. Memory is bounded by the longest stop sequence.
#[derive(Debug, Clone, Default)]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    held: String,
}

/// What [`StopFilter::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filtered {
    /// Text that is safe to send (possibly empty); generation goes on.
    Pass(String),
    /// A stop sequence was found: send this text (possibly empty) and end.
    Stop {
        /// The text before the stop sequence.
        text: String,
        /// The stop sequence found (the one that starts first).
        stop: String,
    },
}

impl StopFilter {
    pub(crate) fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub(crate) fn push(&mut self, text: &str) -> Filtered {
        if self.stops.is_empty() {
            return Filtered::Pass(text.to_owned());
        }
        self.held.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| Some((self.held.find(stop.as_str())?, stop)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = first_stop {
            let stop = stop.clone();
            self.held.truncate(at);
            return Filtered::Stop {
                text: std::mem::take(&mut self.held),
                stop,
            };
        }
        // Keep the longest tail that is a proper prefix of some stop sequence.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let earliest = self.held.len().saturating_sub(longest.saturating_sub(1));
        let keep_from = (earliest..self.held.len())
            .filter(|&at| self.held.is_char_boundary(at))
            .find(|&at| {
                let tail = &self.held[at..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let held = self.held.split_off(keep_from);
        Filtered::Pass(std::mem::replace(&mut self.held, held))
    }

    /// The end of generation: what was held back could not become a stop sequence.
    pub(crate) fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut filter = StopFilter::new(stops.iter().map(|stop| (*stop).to_owned()).collect());
        let mut out = String::new();
        for piece in pieces {
            match filter.push(piece) {
                Filtered::Pass(text) => out.push_str(&text),
                Filtered::Stop { text, .. } => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&filter.flush());
        (out, false)
    }

    /// Stop sequences, the pieces fed, and the expected text and whether it stopped.
    type Case<'a> = (&'a [&'a str], &'a [&'a str], (&'a str, bool));

    #[test]
    fn check_stop_sequences() {
        let cases: &[Case<'_>] = &[
            (&[], &["a", "b"], ("ab", false)),
            (
                &["END"],
                &["hello ", "E", "N", "D", " more"],
                ("hello ", true),
            ),
            (&["END"], &["hello EN", "d"], ("hello ENd", false)),
            (&["END"], &["xEND"], ("x", true)),
            (&["\n\n"], &["a\n", "b\n", "\nc"], ("a\nb", true)),
            (&["ab", "b"], &["xab"], ("x", true)),
            (&["abc", "bd"], &["ab", "d"], ("a", true)),
            (&["안녕"], &["하이 안", "녕"], ("하이 ", true)),
            (&["안녕"], &["하이 안", "하"], ("하이 안하", false)),
            (&["END"], &["EN"], ("EN", false)),
        ];
        for (stops, pieces, (text, stopped)) in cases {
            assert_eq!(
                run(stops, pieces),
                ((*text).to_owned(), *stopped),
                "stops {stops:?} pieces {pieces:?}"
            );
        }
    }

    #[test]
    fn held_text_is_bounded_by_the_longest_stop() {
        let mut filter = StopFilter::new(vec!["xyz".into()]);
        for _ in 0..1000 {
            let _ = filter.push("xy");
            assert!(filter.held.len() <= 2);
        }
    }
}
