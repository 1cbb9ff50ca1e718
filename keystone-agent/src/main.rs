//! keystone-agent: loads the XDP program, programs its maps from the config, and
//! serves the admin API and metrics.
//!
//! Exit codes: 0 clean shutdown; 64 invalid config or arguments; 1 anything else.

use std::{
    collections::BTreeSet, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, ValueEnum};
use keystone_agent::{
    admin_server::{self, ServerMetrics},
    admin_token::AdminToken,
    agent::{Agent, TICK},
    api::{ApiState, router},
    config::LoadedConfig,
    dataplane::{
        aya_dataplane::{AyaDataplane, LoadOptions},
        interfaces,
        start::Start,
    },
    fleet::{self, Fleet},
    open_files, secrets,
    store::Store,
    tasks::Tasks,
    webhook::WebhookVerifier,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "keystone-agent",
    version = keystone_agent::VERSION,
    about = "Keystone's XDP load-balancer agent",
    after_help = "Environment:\n  \
        KEYSTONE_LOG  which log lines to print, as a tracing filter [default: info]\n                \
        e.g. debug, or info,keystone_agent::health=debug"
)]
struct Args {
    /// The YAML config.
    #[arg(
        short,
        long,
        env = "KEYSTONE_CONFIG",
        default_value = "/etc/keystone/keystone.yaml"
    )]
    config: PathBuf,
    /// bpffs directory for the pinned program, link and maps.
    #[arg(long, env = "KEYSTONE_PIN_DIR", default_value = "/sys/fs/bpf/keystone")]
    pin_dir: PathBuf,
    /// Where the agent keeps its state (e.g. a generated admin token).
    #[arg(long, env = "KEYSTONE_STATE_DIR", default_value = "/var/lib/keystone")]
    state_dir: PathBuf,
    /// Interfaces to attach to (overrides the config's `interfaces:`).
    #[arg(short, long = "interface")]
    interfaces: Vec<String>,
    /// On exit, leave the program attached and pinned so forwarding continues.
    #[arg(long)]
    keep_forwarding: bool,
    /// Only validate the config (FILE, else --config), print every error and warning,
    /// and exit (0 valid, 64 invalid).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    check: Option<Option<PathBuf>>,
    /// Treat config warnings (unknown or L7-only fields, contradictions) as errors,
    /// with --check (for CI) and at start.
    #[arg(long)]
    strict: bool,
    /// Log lines on stderr: text, or JSON lines with every field (deployment, tenant,
    /// state, ...) as a key.
    #[arg(long, value_enum, env = "KEYSTONE_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Write the man page to DIR and exit (used when packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_man: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit code for a bad config or bad arguments (EX_USAGE, as linkerd2-proxy uses).
const EXIT_USAGE: u8 = 64;
/// How long in-flight API requests, then background tasks, get after a shutdown signal.
const GRACE: Duration = Duration::from_secs(5);
const SECOND: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Some(file)) = &args.check {
        args.config = file.clone();
    }
    if let Some(dir) = &args.generate_man {
        return match clap_mangen::generate_to(Args::command(), dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "keystone-agent: cannot write the man page to {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = init_logging(args.log_format) {
        eprintln!("keystone-agent: {e:#}");
        return ExitCode::from(EXIT_USAGE);
    }
    let loaded = LoadedConfig::load(&args.config);
    let (report, ok) = keystone_agent::config::check_report(&args.config, &loaded, args.strict);
    // Not a config problem (--strict keeps it a warning): a deliberate choice that needs a proxy.
    let exposed = loaded
        .as_ref()
        .ok()
        .and_then(|c| admin_exposure(c.config.admin.listen));
    if args.check.is_some() {
        if let Some(warning) = &exposed {
            println!("warning: {warning}");
        }
        print!("{report}");
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_USAGE)
        };
    }
    let config = match loaded {
        Ok(config) if ok => config,
        _ => {
            eprint!("{report}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("config: {warning}");
    }
    if let Some(warning) = &exposed {
        tracing::warn!("{warning}");
    }
    // Before the runtime's threads exist: they inherit the dropped capabilities.
    let prepared = match prepare(&args, &config) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("keystone-agent: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let result = runtime.block_on(run(args, config, prepared));
    // Blocking work still running (a send, a task aborted after its grace) gets the
    // grace too; dropping the runtime would wait for it forever.
    runtime.shutdown_timeout(GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keystone-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The warning for an admin API other hosts can reach, if it is one.
fn admin_exposure(listen: SocketAddr) -> Option<String> {
    (!listen.ip().is_loopback()).then(|| {
        format!(
            "admin.listen {listen} is not a loopback address: the admin API (bearer token, \
             plain HTTP) is reachable from other hosts; keep it on 127.0.0.1 or put a \
             TLS-terminating proxy in front of it (README: Admin API)"
        )
    })
}

/// What the agent sets up while it is one privileged thread: everything that can
/// fail is checked, and the admin port bound, before the data plane is touched.
struct Prepared {
    interfaces: Vec<String>,
    token: AdminToken,
    /// The open-files limit in force (raised to the hard limit at start).
    open_files: u64,
    webhook: Option<Arc<WebhookVerifier>>,
    listener: std::net::TcpListener,
    dataplane: AyaDataplane,
    /// Undone when dropped uncommitted: a start that fails leaves nothing behind.
    start: Start,
}

fn prepare(args: &Args, config: &LoadedConfig) -> anyhow::Result<Prepared> {
    let open_files = raise_open_files_limit();
    // `--interface` overrides the list; those get the top-level `attach:`.
    let modes = if args.interfaces.is_empty() {
        config.config.interface_modes()
    } else {
        let mode = config.config.attach;
        args.interfaces.iter().map(|i| (i.clone(), mode)).collect()
    };
    let interfaces: Vec<String> = modes.iter().map(|(i, _)| i.clone()).collect();
    if interfaces.is_empty() {
        bail!(
            "no interfaces to attach to: list them under `interfaces:` in the config or pass --interface"
        );
    }
    // Whatever the agent writes from here on (state, config copy, token) is private.
    secrets::private_new_files();
    match secrets::lock_down(&args.state_dir) {
        Ok(fixed) if !fixed.is_empty() => {
            tracing::warn!(files = ?fixed, "state files were readable by others; made them 0600")
        }
        Ok(_) => {}
        Err(e) => bail!(
            "cannot make the state directory {} private (0700): {e}",
            args.state_dir.display()
        ),
    }
    let token = AdminToken::from_config(&config.config.admin, &args.state_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", e.field()))?;
    let webhook = match &config.config.webhook {
        Some(w) => Some(Arc::new(
            WebhookVerifier::from_config(w)
                .context("cannot set up the deployment webhook")?
                .with_replay_file(args.state_dir.join("webhook-replay.json")),
        )),
        None => None,
    };
    let admin_addr = config.config.admin.listen;
    let listener = bind_admin(admin_addr)
        .with_context(|| format!("cannot listen on admin.listen {admin_addr}"))?;
    // Before anything is attached, so a refused config leaves nothing behind.
    interfaces::check_tcx(&modes).context("cannot attach the program")?;
    let attached = interfaces::predicted_flags(&modes);
    interfaces::check_dsr_backends(&config.vip_specs(), &attached, &mut BTreeSet::new())
        .context("cannot serve the config")?;
    let (dataplane, start) = AyaDataplane::begin(LoadOptions {
        interfaces: interfaces.clone(),
        limits: config.config.limits,
        xdp_mode: config.config.attach,
        interface_modes: modes.into_iter().collect(),
        ..LoadOptions::new(args.pin_dir.clone())
    })
    .with_context(|| format!("cannot load the XDP program onto {}", interfaces.join(", ")))?;
    let kept = keystone_agent::privileges::drop_privileges()
        .context("cannot drop the capabilities the agent no longer needs")?;
    tracing::info!(capabilities = ?kept, "dropped every other capability; NoNewPrivs set");
    Ok(Prepared {
        interfaces,
        token,
        open_files,
        webhook,
        listener,
        dataplane,
        start,
    })
}

/// A listening socket on `addr` with `SO_REUSEADDR` (as tokio binds), so a restart
/// is not refused while the previous agent's connections linger in TIME_WAIT.
fn bind_admin(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn run(args: Args, config: LoadedConfig, prepared: Prepared) -> anyhow::Result<()> {
    let admin_addr = config.config.admin.listen;
    let listener = tokio::net::TcpListener::from_std(prepared.listener)
        .with_context(|| format!("cannot listen on admin.listen {admin_addr}"))?;
    let store = Store::new(&args.state_dir);
    let fleet = match &config.config.fleet {
        Some(f) => Some(Arc::new(
            Fleet::connect(f).await.context("cannot join the fleet")?,
        )),
        None => None,
    };
    let agent = Agent::start_in_fleet(config, Box::new(prepared.dataplane), Some(store), fleet)
        .context("cannot start the agent")?;
    prepared
        .start
        .commit()
        .context("cannot finish loading the data plane")?;
    agent.use_admin_token(prepared.token);
    // Before the API answers: dsr needs every backend's MAC from the first packet.
    agent.prime_neighbours();
    let server_metrics = ServerMetrics::default();
    let registry = keystone_agent::metrics::registry(&agent);
    server_metrics
        .register(&registry)
        .context("cannot register the admin server's metrics")?;
    if let Some(watch) = agent.pin_watch() {
        watch
            .register(&registry)
            .context("cannot register the pin metrics")?;
    }
    let registry = Arc::new(registry);
    tracing::info!(%admin_addr, interfaces = ?prepared.interfaces, "keystone-agent ready");
    // The data plane is programmed and the API listens: a Type=notify unit is started.
    if let Err(e) = keystone_agent::sd_notify::notify("READY=1") {
        tracing::warn!(error = %e, "cannot tell systemd the agent is ready (NOTIFY_SOCKET)");
    }

    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let tasks = background_tasks(&agent);
    let fleet_run = agent
        .fleet_task()
        .map(|(fleet, apply)| tokio::spawn(fleet::run(fleet, apply, shutdown_rx.clone())));
    tokio::spawn(handle_signals(agent.clone(), shutdown_tx));

    let app = router(ApiState {
        agent: agent.clone(),
        registry,
        webhook: prepared.webhook,
    });
    let mut graceful_rx = shutdown_rx.clone();
    let limits = admin_server::Limits {
        max_connections: open_files::admin_connection_limit(prepared.open_files),
        header_read_timeout: admin_server::HEADER_READ_TIMEOUT,
    };
    tracing::info!(
        max_connections = limits.max_connections,
        open_files = prepared.open_files,
        "admin API connections limited to keep descriptors for health checks"
    );
    let server = tokio::spawn(admin_server::serve(
        listener,
        app,
        limits,
        server_metrics,
        async move {
            let _ = graceful_rx.wait_for(|stop| *stop).await;
        },
    ));
    let _ = shutdown_rx.wait_for(|stop| *stop).await;
    // In this order: no new requests, no more background work, then the data plane.
    match tokio::time::timeout(GRACE, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "admin API server task failed"),
        Err(_) => {
            tracing::warn!(grace = ?GRACE, "admin API requests still running after the grace period; exiting anyway")
        }
    }
    tasks.shutdown(GRACE).await;
    // The tasks' last steps may have queued events: a receiver waiting for
    // "promoted" must get it even when the agent stops right after.
    agent.flush_notifications(GRACE).await;
    // Last: the lease goes back, so the others stop waiting for this gateway at once.
    if let Some(run) = fleet_run
        && tokio::time::timeout(GRACE, run).await.is_err()
    {
        tracing::warn!(grace = ?GRACE, "the fleet session did not end within the grace period");
    }
    agent
        .shutdown_dataplane(args.keep_forwarding)
        .context("cannot detach the XDP program")?;
    tracing::info!(
        keep_forwarding = args.keep_forwarding,
        "keystone-agent stopped"
    );
    Ok(())
}

/// Raises the soft open-files limit to the hard one and returns the limit in force,
/// warning when it stays low.
fn raise_open_files_limit() -> u64 {
    match open_files::raise_limit() {
        Ok(limit) => {
            if limit.soft != limit.soft_before {
                tracing::info!(
                    from = limit.soft_before,
                    to = limit.soft,
                    "open-files limit raised"
                );
            }
            if limit.soft < 4096 {
                tracing::warn!(
                    limit = limit.soft,
                    "the open-files limit is low (raise the hard limit, e.g. LimitNOFILE=65536 in the systemd unit)"
                );
            }
            limit.soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit; assuming 1024");
            1024
        }
    }
}

/// Logs to stderr in `format`, filtered by `KEYSTONE_LOG` (a bad filter is an error).
fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("KEYSTONE_LOG") {
        Ok(text) => EnvFilter::try_new(&text)
            .with_context(|| format!("KEYSTONE_LOG={text:?} is not a log filter (e.g. info, debug, info,keystone_agent::health=debug)"))?,
        Err(_) => EnvFilter::new("info"),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

/// SIGHUP reloads; SIGTERM and SIGINT stop.
async fn handle_signals(agent: Arc<Agent>, shutdown: tokio::sync::watch::Sender<bool>) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        let _ = shutdown.send(true);
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => match agent.reload().await {
                Ok(r) => tracing::info!(generation = r.config_generation, "SIGHUP: config reloaded"),
                Err(e) => tracing::error!("SIGHUP: reload refused, the running config stays: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    let _ = shutdown.send(true);
}

/// The agent's background work, every run on the blocking pool.
fn background_tasks(agent: &Arc<Agent>) -> Tasks {
    let mut tasks = Tasks::new();
    tasks.every("traffic samples", SECOND, on(agent, sample_traffic));
    tasks.every("deployment ticks", TICK, on(agent, Agent::tick));
    // Re-applies the data plane whenever a backend's health changes, and once now:
    // checks that finished before this subscription were never followed up (their
    // health was not saved, so a restart after a SIGKILL started without it).
    let mut health = agent.health().subscribe();
    health.mark_changed();
    tasks.on_change("health follow-up", health, on(agent, Agent::health_changed));
    // Deployments' Prometheus analysis queries.
    tasks.every(
        "prometheus analysis",
        SECOND,
        on(agent, Agent::poll_prometheus),
    );
    // Keeps the backends' neighbour entries resolved (see `Agent::prime_neighbours`).
    tasks.every(
        "neighbour priming",
        10 * SECOND,
        on(agent, Agent::prime_neighbours),
    );
    // BGP announcements through BIRD (see `Agent::announce`).
    tasks.every("bgp announcements", SECOND / 2, on(agent, Agent::announce));
    // Puts back pins removed under the running agent (see `Agent::restore_pins`).
    tasks.every("pin restoring", 2 * SECOND, on(agent, Agent::restore_pins));
    tasks
}

/// `work` on the agent, as a task's work.
fn on(agent: &Arc<Agent>, work: fn(&Agent)) -> impl Fn() + Send + Sync + 'static {
    let agent = agent.clone();
    move || work(&agent)
}

/// Samples counters for the live traffic share in `status`.
fn sample_traffic(agent: &Agent) {
    if let Err(e) = agent.sample() {
        tracing::warn!(error = %e, "cannot read data-plane counters");
    }
}
