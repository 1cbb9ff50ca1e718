//! The agent's background work: named tasks that run a piece of blocking work every
//! period (or on every change of a watch) until one shutdown signal, then are joined
//! with a bounded grace, so none runs after the data plane is shut down.
//!
//! A run that panics is logged with the task's name, and the task runs again at its
//! next trigger: every run starts afresh from the agent's shared state (a tick, a
//! health follow-up, a pin check), so one bad run must not silently stop deployments
//! advancing while the API keeps answering.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, Interval, MissedTickBehavior},
};

/// The running background tasks and the signal that stops them all.
pub struct Tasks {
    stop: watch::Sender<bool>,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self {
            stop: watch::channel(false).0,
            running: Vec::new(),
        }
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` on the blocking pool at once and then every `period` (measured from
    /// the end of a run that overran it: missed periods are not caught up).
    pub fn every(
        &mut self,
        name: &'static str,
        period: Duration,
        work: impl Fn() + Send + Sync + 'static,
    ) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.spawn(name, interval, work);
    }

    /// Runs `work` on the blocking pool after every change of `changes`, until its
    /// sender is gone.
    pub fn on_change<T: Send + Sync + 'static>(
        &mut self,
        name: &'static str,
        changes: watch::Receiver<T>,
        work: impl Fn() + Send + Sync + 'static,
    ) {
        self.spawn(name, changes, work);
    }

    fn spawn(
        &mut self,
        name: &'static str,
        trigger: impl Trigger,
        work: impl Fn() + Send + Sync + 'static,
    ) {
        let handle = tokio::spawn(run(name, trigger, self.stop.subscribe(), Arc::new(work)));
        self.running.push((name, handle));
    }

    /// Tells every task to stop (at once, when called) and joins them; the returned
    /// future ends within `grace`. A task still running then is named in a warning and
    /// aborted; its names are returned. (Its work, on a blocking thread, cannot be
    /// interrupted: it finishes on its own, but nothing waits for it any more.)
    pub fn shutdown(self, grace: Duration) -> impl Future<Output = Vec<&'static str>> {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + grace;
        async move {
            let mut stuck = Vec::new();
            for (name, mut handle) in self.running {
                match tokio::time::timeout_at(deadline, &mut handle).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(task = name, error = %e, "background task failed"),
                    Err(_) => {
                        tracing::warn!(
                            task = name,
                            ?grace,
                            "background task still running after the grace period; aborted"
                        );
                        handle.abort();
                        stuck.push(name);
                    }
                }
            }
            stuck
        }
    }
}

/// What wakes a task: the next period, or the next change.
trait Trigger: Send + 'static {
    /// Waits for the next run; false when there will be none.
    fn next(&mut self) -> impl Future<Output = bool> + Send;
}

impl Trigger for Interval {
    async fn next(&mut self) -> bool {
        self.tick().await;
        true
    }
}

impl<T: Send + Sync + 'static> Trigger for watch::Receiver<T> {
    async fn next(&mut self) -> bool {
        self.changed().await.is_ok()
    }
}

async fn run(
    name: &'static str,
    mut trigger: impl Trigger,
    mut stop: watch::Receiver<bool>,
    work: Arc<dyn Fn() + Send + Sync>,
) {
    loop {
        tokio::select! {
            biased;
            // Also ends when the `Tasks` is dropped without a shutdown.
            _ = stop.wait_for(|stop| *stop) => return,
            more = trigger.next() => if !more { return },
        }
        let work = work.clone();
        // Map reads and table writes are syscalls: keep them off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || work()).await {
            tracing::error!(task = name, error = %e, "background task panicked; it runs again at its next trigger");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};

    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;

    const PERIOD: Duration = Duration::from_secs(1);
    const GRACE: Duration = Duration::from_secs(5);

    /// A task named `name` that reports each run on the returned channel.
    fn counting(tasks: &mut Tasks, name: &'static str) -> UnboundedReceiver<()> {
        let (ran, runs) = unbounded_channel();
        tasks.every(name, PERIOD, move || {
            let _ = ran.send(());
        });
        runs
    }

    /// The log lines written while the returned guard lives (this thread only: the
    /// tasks' own log lines come from the test's single-threaded runtime).
    fn capture_logs() -> (tracing::subscriber::DefaultGuard, Arc<Mutex<Vec<u8>>>) {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || LogWriter(writer.clone()))
            .with_ansi(false)
            .finish();
        (tracing::subscriber::set_default(subscriber), logs)
    }

    struct LogWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(logs: &Mutex<Vec<u8>>) -> String {
        String::from_utf8_lossy(&logs.lock().unwrap()).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_runs_once_per_period() {
        let mut tasks = Tasks::new();
        let mut runs = counting(&mut tasks, "count");
        let mut at = Vec::new();
        for _ in 0..3 {
            runs.recv().await.expect("the task stopped");
            at.push(Instant::now());
        }
        assert_eq!(at[1] - at[0], PERIOD);
        assert_eq!(at[2] - at[1], PERIOD);
        assert_eq!(tasks.shutdown(GRACE).await, Vec::<&str>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_every_task_and_joins_it() {
        let mut tasks = Tasks::new();
        let mut first = counting(&mut tasks, "first");
        let mut second = counting(&mut tasks, "second");
        first.recv().await.expect("the first task never ran");
        second.recv().await.expect("the second task never ran");
        assert_eq!(tasks.shutdown(GRACE).await, Vec::<&str>::new());
        // Joined: each task is gone with its work (and the sender in it).
        for runs in [&mut first, &mut second] {
            while runs.try_recv().is_ok() {}
            assert!(
                runs.is_closed(),
                "a task still holds its work after shutdown"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_task_runs_on_every_change_and_stops_at_shutdown() {
        let (changed, changes) = watch::channel(0u64);
        let (ran, mut runs) = unbounded_channel();
        let mut tasks = Tasks::new();
        tasks.on_change("follow", changes, move || {
            let _ = ran.send(());
        });
        for generation in 1..=2 {
            changed.send(generation).unwrap();
            runs.recv()
                .await
                .expect("the task did not run after a change");
        }
        assert_eq!(tasks.shutdown(GRACE).await, Vec::<&str>::new());
        assert_eq!(runs.recv().await, None, "the task outlived its shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_stuck_past_the_grace_is_named_and_does_not_hold_shutdown() {
        let (logs_guard, logs) = capture_logs();
        let mut tasks = Tasks::new();
        let (entered, mut inside) = unbounded_channel();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        tasks.every("stuck", PERIOD, move || {
            let _ = entered.send(());
            // Bounded so a shutdown that waits for it ends the test (as a failure).
            let _ = released
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(30));
        });
        inside.recv().await.expect("the stuck task never ran");
        let shutdown = tokio::spawn(tasks.shutdown(GRACE));
        // A running blocking task keeps paused time from advancing on its own.
        tokio::time::advance(GRACE).await;
        let stuck = shutdown.await.unwrap();
        let _ = release.send(());
        drop(logs_guard);
        assert_eq!(stuck, ["stuck"]);
        let logs = text(&logs);
        assert!(
            logs.contains("task=\"stuck\"") && logs.contains("still running after the grace"),
            "{logs}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_named_and_runs_again() {
        let (_logs_guard, logs) = capture_logs();
        let (ran, mut runs) = unbounded_channel();
        let mut tasks = Tasks::new();
        tasks.every("fragile", PERIOD, move || {
            let _ = ran.send(());
            panic!("one bad run");
        });
        for _ in 0..2 {
            runs.recv().await.expect("the task stopped after a panic");
        }
        assert_eq!(tasks.shutdown(GRACE).await, Vec::<&str>::new());
        let logs = text(&logs);
        assert!(
            logs.contains("task=\"fragile\"") && logs.contains("panicked"),
            "{logs}"
        );
    }
}
