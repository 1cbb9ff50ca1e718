//! Measuring one case of `bench e2e`: wrk, iperf3 and the packet generator, with the
//! counters and CPU time around each run.

use std::{
    fs,
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use keystone_lab::{
    Probe,
    cmd::{self, in_ns},
    lab::CLIENT4,
    wait_for,
};

use super::{
    Bench, Case, CaseResult, FLOWS, GW_CLIENT_LINK, LINK, Marks, PORTS, Pps, READY, WARM_UP_SECS,
    Window, configs,
    netstat::{self, TcpCounters},
    tools::{self, CpuTimes, Iperf, LinkCounters, Wrk},
};
use crate::{bench::table::human, util};

impl Bench {
    pub(super) fn measure(&mut self, case: Case) -> Result<CaseResult> {
        let target = self.target(case);
        self.wrk(target, true, WARM_UP_SECS)?;
        let close = self.wrk(target, true, self.secs)?;
        print_wrk(
            "new connection per request",
            "conn/s",
            &close,
            " (user/system/softirq/idle %)",
        );
        util::interrupted()?;
        let keepalive = self.wrk(target, false, self.secs)?;
        print_wrk("keep-alive", "req/s", &keepalive, "");
        util::interrupted()?;
        let iperf = self.iperf(target)?;
        println!(
            "iperf3: {:.2} Gbit/s, {} retransmits; CPU {}",
            iperf.0.bits_per_second / 1e9,
            iperf.0.retransmits,
            iperf.1.cpu
        );
        util::interrupted()?;
        let pps = if case == Case::Haproxy {
            println!("packets/s: not measured (HAProxy does not balance UDP)");
            None
        } else {
            let p = self.pps(target)?;
            println!(
                "trafgen: {:.0} pps sent, {:.0} pps forwarded to the backends; CPU {}",
                p.0.sent, p.0.forwarded, p.1.cpu
            );
            Some(p)
        };
        Ok(CaseResult {
            case,
            label: case.label().to_owned(),
            close,
            keepalive,
            iperf,
            pps,
            left_time_wait: 0,
        })
    }

    fn link_counters(&self, ns: &str, dev: &str) -> Result<LinkCounters> {
        let out = cmd::run(
            std::process::Command::new("ip")
                .args(["-n", ns, "-j", "-s", "link", "show", "dev", dev]),
        )?;
        tools::parse_link_counters(&out)
    }

    fn marks(&self) -> Result<Marks> {
        let backends = self
            .lab
            .backends()
            .iter()
            .map(|b| self.link_counters(&b.ns, LINK))
            .collect::<Result<_>>()?;
        let mut tcp = TcpCounters::of(self.lab.client_ns())?;
        for b in self.lab.backends() {
            tcp = tcp.plus(&TcpCounters::of(&b.ns)?);
        }
        Ok(Marks {
            tcp,
            backlog_drops: netstat::backlog_drops()?,
            cpu_wait_us: netstat::cpu_wait_us(),
            at: Instant::now(),
            cpu: CpuTimes::now()?,
            backends,
            client: self.link_counters(self.lab.client_ns(), LINK)?,
        })
    }

    /// `wrk` from the client for `secs` against `target`'s HTTP port; with `close`,
    /// every request on a new connection.
    fn wrk(&self, target: Ipv4Addr, close: bool, secs: u64) -> Result<(Wrk, Window)> {
        let url = format!("http://{target}:{}/", PORTS.http);
        let mut args: Vec<String> = [
            "-t",
            "2",
            "-c",
            &self.connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--timeout",
            "2s",
            "--latency",
        ]
        .map(str::to_owned)
        .into();
        if close {
            args.extend(["-H".to_owned(), "Connection: close".to_owned()]);
        }
        args.push(url);
        let before = self.marks()?;
        let out = self.bounded(self.lab.client_ns(), &self.programs.wrk, secs, &args)?;
        let window = before.window_to(&self.marks()?);
        let wrk = tools::parse_wrk(&out)?;
        if wrk.requests == 0 {
            bail!("wrk completed no request against {target}:\n{out}");
        }
        Ok((wrk, window))
    }

    /// One iperf3 TCP stream from the client to `target`'s iperf3 port (the first
    /// ramp-up second omitted).
    fn iperf(&self, target: Ipv4Addr) -> Result<(Iperf, Window)> {
        let args: Vec<String> = [
            "--client",
            &target.to_string(),
            "--port",
            &PORTS.iperf.to_string(),
            "--time",
            &self.secs.to_string(),
            "--omit",
            "1",
            "--connect-timeout",
            "3000",
            "--json",
        ]
        .map(str::to_owned)
        .into();
        let before = self.marks()?;
        let out = cmd::output(
            in_ns(self.lab.client_ns(), "timeout")
                .args(["-k", "5", &(self.secs + 20).to_string()])
                .arg(&self.programs.iperf3)
                .args(&args),
        )?;
        let window = before.window_to(&self.marks()?);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let iperf = tools::parse_iperf(&stdout).with_context(|| {
            format!(
                "iperf3 to {target} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        Ok((iperf, window))
    }

    /// trafgen in the client sends 60-byte UDP frames to `target` as fast as one
    /// process can. The rate comes from a window of `secs` that opens once it sends;
    /// the share forwarded from the whole run, counted after the last packet landed.
    fn pps(&mut self, target: Ipv4Addr) -> Result<(Pps, Window)> {
        let gw_mac = mac(self.lab.gateway_ns(), GW_CLIENT_LINK)?;
        let client_mac = mac(self.lab.client_ns(), LINK)?;
        let conf = self.lab.state_dir().join("trafgen.cfg");
        fs::write(
            &conf,
            configs::trafgen_config(&gw_mac, &client_mac, CLIENT4, target, PORTS.udp, FLOWS),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        // Far more than one process sends in the window (the bench stops trafgen),
        // and yet a bound.
        let bound = (self.secs + 30) * 10_000_000;
        let client = self.lab.client_ns().to_owned();
        let trafgen = self.programs.trafgen.clone();
        let gw_napi = self.gateway_napi_thread()?;
        // A queue in front of the client's veth: when the gateway falls behind, veth
        // stops its queue and trafgen's frames wait or are dropped here (trafgen goes
        // on), instead of trafgen failing on a busy device.
        self.lab.exec(
            &client,
            "tc",
            &[
                "qdisc", "replace", "dev", LINK, "root", "pfifo", "limit", "10000",
            ],
        )?;
        let before = self.marks()?;
        let pid = self.lab.spawn(
            "trafgen",
            &client,
            &trafgen,
            &[
                "--dev".as_ref(),
                LINK.as_ref(),
                "--conf".as_ref(),
                conf.as_os_str(),
                "--cpus".as_ref(),
                "1".as_ref(),
                // Leave the host's socket memory sysctls and IRQ affinities alone.
                "--no-sock-mem".as_ref(),
                "--notouch-irq".as_ref(),
                // Blocking sendto(2) per frame (a gap of 0): it waits while the queue
                // is full, where the TX_RING path fails on a busy device.
                "--gap".as_ref(),
                "0".as_ref(),
                "--qdisc-path".as_ref(),
                "--num".as_ref(),
                bound.to_string().as_ref(),
            ],
        )?;
        let measured = (|| {
            wait_for("trafgen to send", READY, || {
                self.lab.ensure_running("trafgen")?;
                Ok(match self.link_counters(&client, LINK) {
                    Ok(c) if c.tx_packets > before.client.tx_packets + 10_000 => Probe::Ready(()),
                    Ok(c) => Probe::NotYet(format!(
                        "{} packets sent",
                        c.tx_packets.saturating_sub(before.client.tx_packets)
                    )),
                    Err(e) => Probe::NotYet(format!("{e:#}")),
                })
            })?;
            let begin = self.marks()?;
            let thread_begin = gw_napi.thread.map(tools::task_cpu_secs).transpose()?;
            let end_at = begin.at + Duration::from_secs(self.secs);
            // The window itself: the generator runs while the time passes.
            while Instant::now() < end_at {
                util::interrupted()?;
                self.lab.ensure_running("trafgen")?;
                thread::sleep((end_at - Instant::now()).min(Duration::from_millis(200)));
            }
            let thread_end = gw_napi.thread.map(tools::task_cpu_secs).transpose()?;
            let window = begin.window_to(&self.marks()?);
            let gateway_secs = thread_begin.zip(thread_end).map(|(a, b)| b - a);
            Ok::<_, anyhow::Error>((window, gateway_secs))
        })();
        // trafgen's sending processes are children of the one started, which only
        // waits for them: stop them first.
        for child in children_of(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        self.lab.stop("trafgen")?;
        self.restore_gateway_napi(gw_napi.gro_was_on)?;
        self.lab
            .exec(&client, "tc", &["qdisc", "del", "dev", LINK, "root"])?;
        let (window, gateway_secs) = measured?;
        let mut last = self.marks()?;
        wait_for("the last generated packets to land", READY, || {
            Ok(match self.marks() {
                Ok(now) => {
                    let settled = now.backends == last.backends;
                    last = now;
                    if settled {
                        Probe::Ready(())
                    } else {
                        Probe::NotYet("the backends still receive".into())
                    }
                }
                Err(e) => Probe::NotYet(format!("{e:#}")),
            })
        })?;
        let run = before.window_to(&last);
        let pps = Pps {
            sent: window.client_tx as f64 / window.secs,
            forwarded: window.backend_rx_total() as f64 / window.secs,
            forwarded_share: if run.client_tx > 0 {
                100.0 * run.backend_rx_total() as f64 / run.client_tx as f64
            } else {
                0.0
            },
            gateway_ns: gateway_secs
                .filter(|_| window.backend_rx_total() > 0)
                .map(|s| s * 1e9 / window.backend_rx_total() as f64),
        };
        Ok((pps, window))
    }

    /// Makes the gateway's receive side of the client link a NAPI instance polled by a
    /// kernel thread of its own (GRO on, which gives a veth NAPI without XDP, and
    /// `threaded`): the gateway's work then runs on whichever CPU the generator leaves
    /// free, instead of inline in the generator's system call, so the gateway can be
    /// the bottleneck, and that thread's CPU time is the gateway's cost. The same for
    /// every case.
    fn gateway_napi_thread(&self) -> Result<GatewayNapi> {
        let gw = self.lab.gateway_ns();
        let features = self.lab.exec(gw, "ethtool", &["-k", GW_CLIENT_LINK])?;
        let gro_was_on = features
            .lines()
            .any(|l| l.trim_start().starts_with("generic-receive-offload: on"));
        // Threads are named after the device only, and other labs have an eth-client
        // too: ours is the one that appears now.
        let before = napi_threads(GW_CLIENT_LINK);
        self.lab
            .exec(gw, "ethtool", &["-K", GW_CLIENT_LINK, "gro", "on"])?;
        let threaded = format!("echo 1 > /sys/class/net/{GW_CLIENT_LINK}/threaded");
        self.lab.exec(gw, "sh", &["-c", &threaded])?;
        let thread = wait_for(
            "the gateway's NAPI thread to start",
            Duration::from_secs(2),
            || {
                let new: Vec<u32> = napi_threads(GW_CLIENT_LINK)
                    .into_iter()
                    .filter(|p| !before.contains(p))
                    .collect();
                Ok(match new[..] {
                    [pid] => Probe::Ready(pid),
                    [] => Probe::NotYet("no new thread".into()),
                    _ => Probe::NotYet(format!("{} new threads: cannot tell ours", new.len())),
                })
            },
        );
        let thread = match thread {
            Ok(pid) => Some(pid),
            Err(e) => {
                eprintln!("bench e2e: no gateway CPU per packet in this case: {e}");
                None
            }
        };
        Ok(GatewayNapi { gro_was_on, thread })
    }

    fn restore_gateway_napi(&self, gro_was_on: bool) -> Result<()> {
        let gw = self.lab.gateway_ns();
        self.lab.exec(
            gw,
            "sh",
            &[
                "-c",
                &format!("echo 0 > /sys/class/net/{GW_CLIENT_LINK}/threaded"),
            ],
        )?;
        let flag = if gro_was_on { "on" } else { "off" };
        self.lab
            .exec(gw, "ethtool", &["-K", GW_CLIENT_LINK, "gro", flag])?;
        Ok(())
    }

    /// `program args…` in `ns`, killed if it runs 20 s past `secs`; its stdout.
    fn bounded(
        &self,
        ns: &str,
        program: &std::path::Path,
        secs: u64,
        args: &[String],
    ) -> Result<String> {
        let out = cmd::run(
            in_ns(ns, "timeout")
                .args(["-k", "5", &(secs + 20).to_string()])
                .arg(program)
                .args(args),
        )?;
        Ok(out)
    }
}

/// What [`Bench::gateway_napi_thread`] changed and found.
struct GatewayNapi {
    gro_was_on: bool,
    /// The kernel thread polling the gateway's client link.
    thread: Option<u32>,
}

/// Pids of the NAPI kernel threads of devices named `dev` (in any namespace).
fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(&prefix))
        })
        .collect()
}

/// Pids of the processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ppid …": comm may hold spaces, so split after ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .is_some_and(|ppid| ppid == pid.to_string())
            })
        })
        .collect()
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &str, dev: &str) -> Result<String> {
    let out = cmd::run(
        std::process::Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", dev]),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`ip -j link show dev {dev}`: {out}"))?;
    v[0]["address"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{dev} in {ns} has no MAC address: {out}"))
}

/// One wrk run's line: rate, latencies, errors and the CPU during it.
fn print_wrk(what: &str, unit: &str, (wrk, window): &(Wrk, Window), cpu_note: &str) {
    println!(
        "{what}: {:.0} {unit}, p50 {}, p99 {}, {} errors; CPU {}{cpu_note}; {}",
        wrk.requests_per_sec,
        human(wrk.p50),
        human(wrk.p99),
        wrk.errors,
        window.cpu,
        window.tcp_line()
    );
}
