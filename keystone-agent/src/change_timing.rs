//! Where the last change through the admin API spent its time, stage by stage
//! (`keystone_api_last_change_seconds{stage}`), so "API call → live" can be split
//! without a profiler. A change runs on one blocking thread from its turn to its
//! answer; the stages are kept in a thread-local there, so code on the path
//! (`Rollouts::commit`) marks them without a clock passed through every call.

use std::{
    cell::RefCell,
    time::{Duration, Instant},
};

/// (stage, time) of one change, in the order recorded: queue, check, etcd (only in
/// a fleet), save and apply (which overlap), commit (their wall time), answer.
pub type Stages = Vec<(&'static str, Duration)>;

struct Clock {
    last: Instant,
    stages: Stages,
}

thread_local! {
    static CURRENT: RefCell<Option<Clock>> = const { RefCell::new(None) };
}

/// Starts timing a change on this thread: `queue` is `entered` (the handler was
/// called) until now (its turn among changes came and a blocking thread took it).
pub fn begin(entered: Instant) {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Clock {
            last: entered,
            stages: Vec::new(),
        })
    });
    lap("queue");
}

/// Ends the stage that began at the previous lap (no-op outside a timed change).
pub fn lap(stage: &'static str) {
    CURRENT.with(|c| {
        if let Some(clock) = c.borrow_mut().as_mut() {
            let now = Instant::now();
            clock.stages.push((stage, now - clock.last));
            clock.last = now;
        }
    });
}

/// Records a stage measured elsewhere (one that overlaps another).
pub fn record(stage: &'static str, took: Duration) {
    CURRENT.with(|c| {
        if let Some(clock) = c.borrow_mut().as_mut() {
            clock.stages.push((stage, took));
        }
    });
}

/// Ends timing on this thread: `answer` is the last lap until now.
pub fn end() -> Stages {
    lap("answer");
    CURRENT
        .with(|c| c.borrow_mut().take())
        .map(|c| c.stages)
        .unwrap_or_default()
}

/// Runs `save` on a thread of its own while `apply` runs on this one, and returns
/// both results once both are done, each stage's time recorded.
pub fn save_while_applying<S: Send, A>(
    save: impl FnOnce() -> S + Send,
    apply: impl FnOnce() -> A,
) -> (S, A) {
    let ((saved, save_took), (applied, apply_took)) = std::thread::scope(|s| {
        let saving = s.spawn(|| {
            let started = Instant::now();
            (save(), started.elapsed())
        });
        let applied = {
            let started = Instant::now();
            (apply(), started.elapsed())
        };
        (saving.join().expect("the state save panicked"), applied)
    });
    record("save", save_took);
    record("apply", apply_took);
    lap("commit");
    (saved, applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_kept_only_inside_a_timed_change() {
        lap("check");
        assert!(end().is_empty(), "no change was being timed");
        begin(Instant::now());
        lap("check");
        let (s, a) = save_while_applying(|| 1, || 2);
        assert_eq!((s, a), (1, 2));
        let names: Vec<&str> = end().iter().map(|(s, _)| *s).collect();
        assert_eq!(
            names,
            ["queue", "check", "save", "apply", "commit", "answer"]
        );
    }
}
