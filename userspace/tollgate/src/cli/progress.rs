//! Progress of long imports and exports on stderr, only when stderr is a
//! terminal and the output is not JSON: a script or a pipe sees nothing.
//! Redrawn at most ten times a second, so a million-entry loop pays nothing
//! measurable.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

/// A one-line counter (`what: done/total`) or, without a total, a spinner
/// with the time spent (`what… 3s`).
pub(super) struct Progress {
    what: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
    on: bool,
}

/// Time between redraws.
const EVERY: Duration = Duration::from_millis(100);

impl Progress {
    /// A progress line for `what`, shown when stderr is a terminal and
    /// `json` is off.
    pub(super) fn new(what: impl Into<String>, total: Option<u64>, json: bool) -> Self {
        Self::with(what, total, !json && std::io::stderr().is_terminal())
    }

    fn with(what: impl Into<String>, total: Option<u64>, on: bool) -> Self {
        Self {
            what: what.into(),
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
            on,
        }
    }

    /// `n` more done.
    pub(super) fn inc(&mut self, n: u64) {
        self.done += n;
        self.tick();
    }

    /// Redraws when due.
    pub(super) fn tick(&mut self) {
        if !self.on || self.drawn.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.drawn = Some(Instant::now());
        eprint!("\r{}\x1b[K", self.line());
        let _ = std::io::stderr().flush();
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs();
        match self.total {
            Some(t) => format!("{}: {}/{t} ({secs}s)", self.what, self.done),
            None => format!("{}… {secs}s", self.what),
        }
    }

    /// Clears the line (before the result is printed).
    pub(super) fn finish(&mut self) {
        if self.on && self.drawn.is_some() {
            eprint!("\r\x1b[K");
            let _ = std::io::stderr().flush();
        }
        self.on = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Runs `f` while a spinner for `what` turns (one request that takes long:
/// a large import or export the agent works on).
pub(super) fn while_waiting<T: Send>(what: &str, json: bool, f: impl FnOnce() -> T + Send) -> T {
    let mut p = Progress::new(what, None, json);
    if !p.on {
        return f();
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = f();
            done.store(true, std::sync::atomic::Ordering::Release);
            r
        });
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            p.tick();
            std::thread::sleep(Duration::from_millis(50));
        }
        p.finish();
        h.join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_and_is_silent_when_off() {
        let mut p = Progress::with("importing", Some(10), true);
        p.inc(3);
        assert!(p.line().starts_with("importing: 3/10 ("), "{}", p.line());
        let mut off = Progress::with("x", None, false);
        off.inc(1);
        assert!(off.drawn.is_none(), "drew while off");
        assert!(
            Progress::with("exporting", None, true)
                .line()
                .starts_with("exporting… ")
        );
    }
}
