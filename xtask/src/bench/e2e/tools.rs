//! Reading what the measuring tools print (wrk, iperf3) and what the kernel counts
//! (interface counters, CPU time), for `bench e2e`.

use std::{fs, time::Duration};

use anyhow::{Context, Result, bail};

/// What one wrk run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Wrk {
    pub requests_per_sec: f64,
    pub requests: u64,
    pub p50: Duration,
    pub p99: Duration,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
    pub errors: u64,
}

/// `1.23ms`, `456.00us`, `1.02s`, `2.00m` as wrk prints latencies.
fn wrk_duration(s: &str) -> Result<Duration> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in wrk latency {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .with_context(|| format!("bad number in wrk latency {s:?}"))?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => bail!("unknown unit in wrk latency {s:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses wrk's report (run with `--latency`).
pub fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut rps = None;
    let mut requests = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>().context("wrk Requests/sec")?);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(wrk_duration(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(wrk_duration(v.trim())?);
        } else if line.contains(" requests in ") {
            let n = line.split_whitespace().next().unwrap_or_default();
            requests = Some(n.parse::<u64>().context("wrk request count")?);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                let n = part.split_whitespace().nth(1).unwrap_or_default();
                errors += n
                    .parse::<u64>()
                    .with_context(|| format!("wrk socket errors {v:?}"))?;
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().context("wrk non-2xx count")?;
        }
    }
    match (rps, requests, p50, p99) {
        (Some(requests_per_sec), Some(requests), Some(p50), Some(p99)) => Ok(Wrk {
            requests_per_sec,
            requests,
            p50,
            p99,
            errors,
        }),
        _ => bail!("wrk printed no Requests/sec, request count or 50%/99% latency:\n{out}"),
    }
}

/// What one iperf3 run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Iperf {
    /// What the receiver got, in bits per second.
    pub bits_per_second: f64,
    pub retransmits: u64,
}

/// Parses `iperf3 --json` output.
pub fn parse_iperf(json: &str) -> Result<Iperf> {
    let v: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("iperf3 output is not JSON:\n{json}"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let bits_per_second = end["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| {
            format!("iperf3 output has no end.sum_received.bits_per_second:\n{json}")
        })?;
    Ok(Iperf {
        bits_per_second,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

/// /proc/stat's unit: 1/100 s on every Linux architecture (the ABI's USER_HZ).
const USER_HZ: f64 = 100.0;

/// Jiffies from /proc/stat's `cpu` line (every CPU together), or a span of time
/// between two readings ([`CpuTimes::since`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    /// Hard and soft interrupts: with veth, most of the packet path.
    pub softirq: u64,
    pub idle: u64,
    pub other: u64,
}

impl CpuTimes {
    pub fn now() -> Result<Self> {
        let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&text)
    }

    fn parse(text: &str) -> Result<Self> {
        let line = text
            .lines()
            .find(|l| l.starts_with("cpu "))
            .context("/proc/stat has no `cpu` line")?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().context("/proc/stat field"))
            .collect::<Result<_>>()?;
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user)
        Ok(Self {
            user: at(0) + at(1),
            system: at(2),
            idle: at(3) + at(4),
            softirq: at(5) + at(6),
            other: at(7),
        })
    }

    /// The time spent from `earlier` to `self`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            idle: self.idle.saturating_sub(earlier.idle),
            other: self.other.saturating_sub(earlier.other),
        }
    }

    /// Two spans of time together.
    pub fn plus(&self, other: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + other.user,
            system: self.system + other.system,
            softirq: self.softirq + other.softirq,
            idle: self.idle + other.idle,
            other: self.other + other.other,
        }
    }

    fn total(&self) -> u64 {
        self.user + self.system + self.softirq + self.idle + self.other
    }

    /// CPU-seconds not idle (a span of time), all CPUs together.
    pub fn busy_secs(&self) -> f64 {
        (self.total() - self.idle) as f64 / USER_HZ
    }

    /// `part` as a percentage of the whole span.
    fn pct(&self, part: u64) -> f64 {
        match self.total() {
            0 => 0.0,
            t => 100.0 * part as f64 / t as f64,
        }
    }
}

impl std::fmt::Display for CpuTimes {
    /// A span of time as `user/system/softirq/idle`, whole percents of all CPUs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}/{:.0}/{:.0}/{:.0}",
            self.pct(self.user),
            self.pct(self.system),
            self.pct(self.softirq),
            self.pct(self.idle)
        )
    }
}

/// CPU time (user + system) task `pid` has used so far, in seconds.
pub fn task_cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    task_cpu_secs_of(&stat).with_context(|| format!("{path}: {stat}"))
}

fn task_cpu_secs_of(stat: &str) -> Result<f64> {
    // "pid (comm) state ppid …": utime and stime are fields 14 and 15, counted from 1;
    // comm may hold spaces, so count after the last ')'.
    let rest = stat.rsplit_once(')').context("no ')' in the stat line")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        f.get(i)
            .context("stat line too short")?
            .parse()
            .context("utime/stime")
    };
    // After ')': state is field 3, so field n is at index n - 3.
    Ok((tick(14 - 3)? + tick(15 - 3)?) as f64 / USER_HZ)
}

/// An interface's packet counters from `ip -j -s link show dev <dev>`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

pub fn parse_link_counters(json: &str) -> Result<LinkCounters> {
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("`ip -j -s link` output:\n{json}"))?;
    let s = &v[0]["stats64"];
    let get = |dir: &str, what: &str| {
        s[dir][what]
            .as_u64()
            .with_context(|| format!("`ip -j -s link` has no stats64.{dir}.{what}:\n{json}"))
    };
    Ok(LinkCounters {
        rx_packets: get("rx", "packets")?,
        tx_packets: get("tx", "packets")?,
        tx_dropped: get("tx", "dropped")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://198.18.0.10:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms  812.11us  21.30ms   88.20%
    Req/Sec    10.55k     1.02k   12.61k    70.00%
  Latency Distribution
     50%    1.34ms
     75%    1.80ms
     90%    2.41ms
     99%  452.00us
  63012 requests in 3.00s, 9.98MB read
  Socket errors: connect 0, read 3, write 1, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  21004.31
Transfer/sec:      3.33MB
";

    #[test]
    fn wrk_report_is_read() {
        let w = parse_wrk(WRK).unwrap();
        assert_eq!(w.requests_per_sec, 21004.31);
        assert_eq!(w.requests, 63012);
        assert_eq!(w.p50, Duration::from_micros(1340));
        assert_eq!(w.p99, Duration::from_micros(452));
        assert_eq!(w.errors, 10);
        assert!(parse_wrk("Running 3s test\n").is_err());
        assert!(wrk_duration("1.5s").unwrap() == Duration::from_millis(1500));
        assert!(wrk_duration("12").is_err());
    }

    #[test]
    fn iperf_json_is_read() {
        let j = r#"{"end":{"sum_sent":{"retransmits":7,"bits_per_second":2e9},
                   "sum_received":{"bits_per_second":1.5e9}}}"#;
        assert_eq!(
            parse_iperf(j).unwrap(),
            Iperf {
                bits_per_second: 1.5e9,
                retransmits: 7
            }
        );
        let err = parse_iperf(r#"{"error":"unable to connect to server"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
    }

    #[test]
    fn cpu_spans_add_up() {
        // user+nice, system, idle+iowait, irq+softirq; steal counts in the total only.
        let a = CpuTimes::parse("cpu  100 0 50 800 0 0 50 0 0 0\ncpu0 1 2 3\n").unwrap();
        let b = CpuTimes::parse("cpu  180 20 90 820 20 5 65 0 0 0\n").unwrap();
        let span = b.since(&a);
        assert_eq!(span.to_string(), "50/20/10/20");
        assert_eq!(span.busy_secs(), 1.6);
        let twice = span.plus(&span);
        assert_eq!(twice.to_string(), "50/20/10/20");
        assert_eq!(twice.busy_secs(), 3.2);
        assert!(CpuTimes::parse("intr 1 2\n").is_err());
    }

    #[test]
    fn task_cpu_time_is_read_after_the_name() {
        let stat = "4242 (napi/eth client-1) S 2 0 0 0 -1 69238880 0 0 0 0 150 250 0 0 20 0 1 0";
        assert_eq!(task_cpu_secs_of(stat).unwrap(), 4.0);
        assert!(task_cpu_secs_of("4242 (x) S 2").is_err());
    }

    #[test]
    fn link_counters_are_read() {
        let j = r#"[{"ifname":"eth-gw","stats64":{"rx":{"bytes":1,"packets":12,"dropped":0},
                  "tx":{"bytes":2,"packets":34,"dropped":5}}}]"#;
        assert_eq!(
            parse_link_counters(j).unwrap(),
            LinkCounters {
                rx_packets: 12,
                tx_packets: 34,
                tx_dropped: 5
            }
        );
    }
}
