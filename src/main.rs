//! The respool binary: parse flags, set up logging, run the proxy until
//! SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use respool::bench::BenchArgs;
use respool::config::{Flags, LogFormat};
use respool::reload::{LogFilter, Reloader};
use respool::{current_thread_runtime, Config, EventLoops, Proxy};

/// respool: a Redis pooling proxy. Without a subcommand it runs the proxy.
#[derive(Debug, Parser)]
#[command(
    name = "respool",
    version,
    about = "A Redis pooling proxy: clients connect to respool, respool carries their commands over a small pool of validated, health-checked upstream connections.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive load against any RESP endpoint, checking every reply; compare
    /// two targets or sweep a proxy setting.
    Bench(Box<BenchArgs>),
    /// Validate a config file (with the RESPOOL_… environment on top, as the
    /// proxy would read it) and print the effective configuration, secrets
    /// masked; exits non-zero when it is invalid.
    CheckConfig {
        /// The TOML config file.
        file: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => return bench(*args),
        Some(Command::CheckConfig { file }) => return check_config(&file),
        None => {}
    }
    // Parsed again with the config file, which needs clap's view of which
    // values the command line and environment gave.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let loaded = match Config::load(&args) {
        Ok(l) => l,
        Err(e) => e.exit(),
    };
    let config = loaded.config.clone();
    let log_filter = init_logging(&config);
    let reloader = Reloader::new(args, &loaded).with_log_filter(log_filter);

    let threads = config.event_loops();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), event_loops = threads, config = ?config, "starting respool");
    if threads == 1 {
        match current_thread_runtime() {
            Ok(runtime) => runtime.block_on(run(config, reloader)),
            Err(e) => {
                eprintln!("respool: cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        }
    } else {
        run_loops(config, threads, reloader)
    }
}

/// Thread per core: `threads` independent single-threaded event loops
/// ([`EventLoops`]) until a signal comes.
fn run_loops(config: Config, threads: usize, reloader: Reloader) -> ExitCode {
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("respool: cannot wait for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = {
        let _context = rt.enter();
        Signals::install()
    };
    let loops = match EventLoops::start(config, threads) {
        Ok(loops) => loops,
        Err(e) => {
            tracing::error!(error = %e, "respool could not start");
            eprintln!("respool: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reloader = loops.enable_reload(reloader);
    rt.block_on(signals.wait(&reloader));
    tracing::info!("signal received; shutting down");
    loops.stop();
    ExitCode::SUCCESS
}

/// `respool check-config FILE`: the full validation of a start, without
/// starting.
fn check_config(file: &std::path::Path) -> ExitCode {
    let args = [
        std::ffi::OsString::from("respool"),
        "--config".into(),
        file.into(),
    ];
    match Config::load(args) {
        Ok(loaded) => {
            print!("{}", loaded.effective.render());
            println!("# {}: OK", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("respool check-config: {e}");
            ExitCode::from(2)
        }
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    // Single-threaded, like the proxy by default: `--sweep` runs respool in
    // this runtime, while the load itself runs on a thread of its own.
    let runtime = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("respool bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(respool::bench::run(args)) {
        Ok(outcome) if outcome.passed() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("respool bench: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: Config, reloader: Reloader) -> ExitCode {
    let signals = Signals::install();
    let proxy = match Proxy::start(config).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "respool could not start");
            eprintln!("respool: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reloader = proxy.enable_reload(reloader);
    signals.wait(&reloader).await;
    tracing::info!("signal received; shutting down");
    proxy.shutdown().await;
    ExitCode::SUCCESS
}

/// The signals respool acts on, installed before it accepts clients: a
/// SIGHUP that arrived before would otherwise end the process.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers; needs a runtime context.
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for SIGINT or SIGTERM; each SIGHUP meanwhile reloads the
    /// configuration (the reload logs what it changed).
    async fn wait(mut self, reloader: &Reloader) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                Some(()) = recv(&mut self.term) => return,
                Some(()) = recv(&mut self.hup) => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = reloader.reload();
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (&mut self, reloader);
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The next delivery of `signal`, or never if it could not be installed.
#[cfg(unix)]
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Sets up logging; returns what changes the filter on a reload.
fn init_logging(config: &Config) -> LogFilter {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter};

    let level = config.log_level();
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| {
        eprintln!("respool: invalid --log-level '{level}', using 'info'");
        EnvFilter::new("info")
    });
    // The filter sits behind a reload layer so that SIGHUP can change it.
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only on a terminal: escape codes in a log file or journal are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = config.log_format() == LogFormat::Json;
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init();
    } else {
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .init();
    }
    Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}
