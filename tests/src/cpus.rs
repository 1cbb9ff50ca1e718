//! Running on a chosen CPU: `BPF_PROG_TEST_RUN` runs an XDP or tc program on the
//! CPU of the thread that calls it (the kernel refuses the `cpu` field and
//! `BPF_F_TEST_RUN_ON_CPU` for these program types: EINVAL), so a test or benchmark
//! that wants a packet on CPU n pins its thread there first.

use std::time::Duration;

use nix::{
    sched::{CpuSet, sched_setaffinity},
    time::{ClockId, clock_gettime},
    unistd::Pid,
};

/// CPUs the calling thread may run on (before any `pin_to`).
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Pins the calling thread to `cpu` (its programs run there from the next call).
pub fn pin_to(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu)
        .unwrap_or_else(|e| panic!("CPU {cpu} is beyond the CPU set: {e}"));
    sched_setaffinity(Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("pinning a thread to CPU {cpu}: {e}"));
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): with wall time
/// over the same span, how much of it the thread was actually running.
pub fn thread_cpu_time() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .unwrap_or_else(|e| panic!("clock_gettime(CLOCK_THREAD_CPUTIME_ID): {e}"));
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Runs `f(cpu)` on each of `cpus` at once, each in a thread pinned to its CPU
/// (created from the calling thread, so in its network namespace); the results in
/// the order of `cpus`. `f` gets a barrier to wait on once its setup is done, so
/// the timed parts start together.
pub fn on_each<T: Send>(
    cpus: &[usize],
    f: impl Fn(usize, &std::sync::Barrier) -> T + Sync,
) -> Vec<T> {
    let barrier = std::sync::Barrier::new(cpus.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = cpus
            .iter()
            .map(|&cpu| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    pin_to(cpu);
                    f(cpu, barrier)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
