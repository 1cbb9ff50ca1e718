//! keystone-agent: loads the XDP program, programs its maps from the config, and
//! serves the admin API and metrics.
//!
//! Exit codes: 0 clean shutdown; 64 invalid config or arguments; 1 anything else.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, ValueEnum};
use keystone_agent::{
    agent::Agent,
    api::{ApiState, router},
    config::LoadedConfig,
    dataplane::aya_dataplane::{AyaDataplane, LoadOptions},
    store::Store,
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
    /// Only validate the config (FILE, else --config) and exit (0 valid, 64 invalid).
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    check: Option<Option<PathBuf>>,
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
/// How long in-flight API requests get after a shutdown signal.
const GRACE: Duration = Duration::from_secs(5);

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
    let config = match LoadedConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for field in &config.ignored_fields {
        tracing::warn!(field, "unknown config field ignored");
    }
    if args.check.is_some() {
        println!(
            "{}: valid, {} tenant(s)",
            args.config.display(),
            config.tenants.len()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    match runtime.block_on(run(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keystone-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, config: LoadedConfig) -> anyhow::Result<()> {
    let interfaces = if args.interfaces.is_empty() {
        config.config.interfaces.clone()
    } else {
        args.interfaces
    };
    if interfaces.is_empty() {
        bail!(
            "no interfaces to attach to: list them under `interfaces:` in the config or pass --interface"
        );
    }
    let token = admin_token(&config, &args.state_dir)?;
    let admin_addr = config.config.admin.listen;

    let dataplane = AyaDataplane::load(LoadOptions {
        interfaces: interfaces.clone(),
        pin_dir: args.pin_dir.clone(),
        limits: config.config.limits,
        ..LoadOptions::default()
    })
    .with_context(|| format!("cannot load the XDP program onto {}", interfaces.join(", ")))?;
    let webhook = match &config.config.webhook {
        Some(w) => Some(Arc::new(
            WebhookVerifier::from_config(w).context("cannot set up the deployment webhook")?,
        )),
        None => None,
    };
    let store = Store::new(&args.state_dir);
    let agent =
        Agent::start(config, Box::new(dataplane), Some(store)).context("cannot start the agent")?;
    // Before the API answers: dsr needs every backend's MAC from the first packet.
    agent.prime_neighbours();
    let registry = Arc::new(keystone_agent::metrics::registry(&agent));
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("cannot listen on admin.listen {admin_addr}"))?;
    tracing::info!(%admin_addr, interfaces = ?interfaces, "keystone-agent ready");
    // The data plane is programmed and the API listens: a Type=notify unit is started.
    if let Err(e) = keystone_agent::sd_notify::notify("READY=1") {
        tracing::warn!(error = %e, "cannot tell systemd the agent is ready (NOTIFY_SOCKET)");
    }

    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(sample_traffic(agent.clone()));
    tokio::spawn(run_deployments(agent.clone()));
    tokio::spawn(follow_health(agent.clone()));
    tokio::spawn(poll_prometheus(agent.clone()));
    tokio::spawn(prime_neighbours(agent.clone()));
    tokio::spawn(handle_signals(agent.clone(), shutdown_tx));

    let app = router(ApiState {
        agent: agent.clone(),
        registry,
        token: Arc::new(token),
        webhook,
    });
    let mut graceful_rx = shutdown_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(async move { server.await });
    let _ = shutdown_rx.wait_for(|stop| *stop).await;
    match tokio::time::timeout(GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin API server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "admin API server task failed"),
        Err(_) => {
            tracing::warn!(grace = ?GRACE, "admin API requests still running after the grace period; exiting anyway")
        }
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
                Ok(generation) => tracing::info!(generation, "SIGHUP: config reloaded"),
                Err(e) => tracing::error!("SIGHUP: reload refused, the running config stays: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    let _ = shutdown.send(true);
}

/// Advances deployments every `TICK`.
async fn run_deployments(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(keystone_agent::agent::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let agent = agent.clone();
        // Map reads and table writes are syscalls: keep them off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || agent.tick()).await {
            tracing::error!(error = %e, "deployment tick panicked");
        }
    }
}

/// Keeps the backends' neighbour entries resolved (see `Agent::prime_neighbours`).
async fn prime_neighbours(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let agent = agent.clone();
        let _ = tokio::task::spawn_blocking(move || agent.prime_neighbours()).await;
    }
}

/// Runs deployments' Prometheus analysis queries once a second.
async fn poll_prometheus(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let agent = agent.clone();
        let _ = tokio::task::spawn_blocking(move || agent.poll_prometheus()).await;
    }
}

/// Re-applies the data plane whenever a backend's health changes.
async fn follow_health(agent: Arc<Agent>) {
    let mut changes = agent.health().subscribe();
    while changes.changed().await.is_ok() {
        let agent = agent.clone();
        let _ = tokio::task::spawn_blocking(move || agent.health_changed()).await;
    }
}

/// Samples counters once a second for the live traffic share in `status`.
async fn sample_traffic(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = agent.sample() {
            tracing::warn!(error = %e, "cannot read data-plane counters");
        }
    }
}

/// The admin token: from the config, its token file, KEYSTONE_ADMIN_TOKEN, or, failing
/// all, generated and written to `<state_dir>/admin-token` (mode 0600) for keystone-ctl.
fn admin_token(config: &LoadedConfig, state_dir: &Path) -> anyhow::Result<String> {
    let admin = &config.config.admin;
    if let Some(token) = &admin.token {
        return Ok(token.clone());
    }
    if let Some(file) = &admin.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read admin.token_file {}", file.display()))?;
        let token = token.trim();
        if token.is_empty() {
            bail!("admin.token_file {} is empty", file.display());
        }
        return Ok(token.to_owned());
    }
    if let Ok(token) = std::env::var("KEYSTONE_ADMIN_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom to generate an admin token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = state_dir.join("admin-token");
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .with_context(|| {
            format!(
                "cannot write the generated admin token to {}",
                path.display()
            )
        })?;
    tracing::info!(path = %path.display(), "no admin token configured; generated one");
    Ok(token)
}
