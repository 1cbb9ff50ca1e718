//! Packet fuzzing through `BPF_PROG_TEST_RUN`: a million random and
//! structure-aware mutated frames (truncated at every header boundary, bad
//! lengths and versions, IPv4 options, IPv6 extension headers, fragments, VLAN
//! tags, ICMP errors, flipped and random bytes) against an independent classifier
//! written here from the contract in `keystone_common::{Reason, Event}`.
//!
//! Checked for every frame: the verdict; a frame not for a VIP leaves untouched
//! (`XDP_PASS`, output = input); only well-formed frames for a configured VIP (or
//! from a nat backend to a client, or a path-MTU error about a VIP flow) are
//! forwarded, and exactly as the classifier rewrites them ("well-formed" is what
//! the balancer reads: Ethernet, at most one VLAN tag, IP version, header and
//! total lengths, no fragment or extension header, a complete fixed TCP/UDP header
//! inside the IP length; checksums and TCP options are the endpoints' business, so
//! a valid checksum must stay valid and an invalid one is not looked at). Checked
//! for every batch: the per-reason, per-action and ICMP-event counters moved by
//! exactly what the classifier predicted, so every drop has a counted reason.
//!
//! `KEYSTONE_FUZZ_SEED=<n>` replays a run (the seed is printed, and named in every
//! failure); `KEYSTONE_FUZZ_PACKETS=<n>` changes the count (default 1,000,000).
//! Each frame is run once (`repeat = 1`: the kernel does not reset the frame
//! between repeats). Needs root: `cargo test -p keystone-tests --test packet_fuzz`.
//!
//! One directory, one test binary: `model` (the configuration and what the
//! classifier knows of it), `classify` (the classifier), `expect` (its verdicts and
//! how an output is compared with one), `generate` (the frames).

mod classify;
mod expect;
mod generate;
mod model;

use keystone_agent::dataplane::Counters;
use keystone_common::{Endpoint, Event, Reason};
use keystone_lab::xdp::*;

use classify::classify;
use expect::{Expected, check_output};
use generate::fuzz_frame;
use model::{Model, fuzz_config};

const DEFAULT_PACKETS: u64 = 1_000_000;
/// Frames between two counter comparisons.
const BATCH: usize = 20_000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

#[derive(Default)]
struct Tally {
    reasons: [u64; Reason::COUNT as usize],
    actions: [u64; 5],
    icmp_events: u64,
}

fn counter_mismatch(before: &Counters, after: &Counters, want: &Tally) -> Option<String> {
    let reasons: Vec<u64> = (0..Reason::COUNT as usize)
        .map(|i| after.reasons[i] - before.reasons[i])
        .collect();
    let actions: Vec<u64> = (0..5)
        .map(|i| after.actions[i] - before.actions[i])
        .collect();
    let icmp =
        after.events[Event::IcmpToBackend as usize] - before.events[Event::IcmpToBackend as usize];
    (reasons != want.reasons || actions != want.actions || icmp != want.icmp_events).then(|| {
        format!(
            "reasons {reasons:?} (want {:?}), actions {actions:?} (want {:?}), icmp events {icmp} (want {})",
            want.reasons, want.actions, want.icmp_events
        )
    })
}

#[test]
fn a_million_fuzzed_packets_keep_the_contract() {
    let seed = env_u64("KEYSTONE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    let packets = env_u64("KEYSTONE_FUZZ_PACKETS").unwrap_or(DEFAULT_PACKETS);
    println!("packet fuzz: seed {seed} (replay with KEYSTONE_FUZZ_SEED={seed}), {packets} frames");
    in_netns(move || {
        let mut gw = Gateway::new();
        let specs = fuzz_config();
        gw.apply(&specs);
        let model = Model::new(&specs);
        let dp = &gw.dp;
        let predict = |vip: &Endpoint, f: &Flow| dp.predict(vip, &f.key()).map(|e| e.socket_addr());
        let mut rng = Rng(seed);
        let (mut done, mut skipped, mut forwarded, mut dropped) = (0u64, 0u64, 0u64, 0u64);
        // At tc: frames `BPF_PROG_TEST_RUN` builds no skb of (`skb_buildable`).
        let mut unbuildable = 0u64;
        let mut batch: Vec<(Vec<u8>, Expected)> = Vec::with_capacity(BATCH);
        let mut total = Tally::default();
        while done < packets {
            let before = gw.counters();
            let mut tally = Tally::default();
            batch.clear();
            while batch.len() < BATCH && done < packets {
                done += 1;
                let input = fuzz_frame(&mut rng);
                if gw.hook == Hook::Tc && !skb_buildable(&input) {
                    unbuildable += 1;
                    continue;
                }
                let Some(want) = classify(&input, &model, &predict) else {
                    skipped += 1;
                    continue;
                };
                let (action, out) = gw.run(&input, gw.in_index);
                let what = || {
                    format!(
                        "seed {seed}, frame #{done}: {want:?}\ninput\n{}\noutput\n{}",
                        hex(&input),
                        hex(&out)
                    )
                };
                assert_eq!(
                    keystone_common::xdp_action_name(action),
                    keystone_common::xdp_action_name(want.action),
                    "action; {}",
                    what()
                );
                if let Err(e) = check_output(&input, &out, &want.output) {
                    panic!("output: {e}; {}", what());
                }
                if let Some(r) = want.reason {
                    tally.reasons[r as usize] += 1;
                }
                tally.actions[action as usize] += 1;
                tally.icmp_events += u64::from(want.icmp_event);
                forwarded += u64::from(action == XDP_TX || action == XDP_REDIRECT);
                dropped += u64::from(action == XDP_DROP);
                batch.push((input, want));
            }
            for (t, n) in total.reasons.iter_mut().zip(tally.reasons) {
                *t += n;
            }
            total.icmp_events += tally.icmp_events;
            let after = gw.counters();
            if let Some(diff) = counter_mismatch(&before, &after, &tally) {
                // Find the frame: the counted reasons do not depend on flow state.
                for (input, want) in &batch {
                    let before = gw.counters();
                    gw.run(input, gw.in_index);
                    let after = gw.counters();
                    let mut one = Tally::default();
                    if let Some(r) = want.reason {
                        one.reasons[r as usize] = 1;
                    }
                    one.actions[want.action as usize] = 1;
                    one.icmp_events = u64::from(want.icmp_event);
                    if let Some(d) = counter_mismatch(&before, &after, &one) {
                        panic!(
                            "seed {seed}: counters for one frame: {d}; {want:?}\n{}",
                            hex(input)
                        );
                    }
                }
                panic!("seed {seed}: counters over frames up to #{done}: {diff}");
            }
        }
        println!(
            "packet fuzz: {done} frames, {forwarded} forwarded ({} ICMP errors to a backend), {dropped} dropped, {skipped} skipped (unpredictable without routes), {unbuildable} not run (no skb for them)",
            total.icmp_events
        );
        let reasons: Vec<String> = Reason::ALL
            .iter()
            .map(|&r| format!("{} {}", r.name(), total.reasons[r as usize]))
            .collect();
        println!("packet fuzz: counted reasons: {}", reasons.join(", "));
        let done = done - unbuildable;
        assert!(
            skipped * 100 < done,
            "seed {seed}: {skipped} of {done} frames could not be classified"
        );
        // The generator must reach every interesting outcome, or the run proves little.
        assert!(
            forwarded > done / 20 && dropped > done / 50,
            "seed {seed}: too few forwarded ({forwarded}) or dropped ({dropped}) frames"
        );
    });
}
