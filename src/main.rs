//! The `wxgate` command: run | check | fake-weixin | demo.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use wxgate::config::Config;

#[global_allocator]
static GLOBAL: wxgate::alloc::MiMalloc = wxgate::alloc::MiMalloc;

/// A reverse-proxy sidecar for WeChat Mini Program backends: wx.login code
/// exchange, sessions, and phone numbers, forwarded to the backend as trusted
/// headers.
#[derive(Parser)]
#[command(name = "wxgate", version, about, long_about = None)]
struct Cli {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, default_value = "config.toml", value_name = "FILE")]
    config: PathBuf,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and exit: 0 if it is valid, 1 with every bad key named otherwise.
    Check,
    /// Serve a fake WeChat API (code2Session, tokens, getuserphonenumber) for tests and CI.
    FakeWeixin {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9911")]
        listen: SocketAddr,
        /// The AppID the fake accepts.
        #[arg(long, default_value = "wx0000000000fake00")]
        appid: String,
        /// The AppSecret the fake accepts.
        #[arg(long, default_value = "fake-secret", env = "WXGATE_FAKE_SECRET")]
        secret: String,
    },
    /// Run wxgate, the fake WeChat and an echo backend in one process and walk
    /// through login, an authenticated request and a phone number.
    Demo,
    /// Probe a running wxgate's admin endpoint (for container health checks):
    /// exit 0 when it answers 200, 1 otherwise.
    Healthcheck {
        /// The admin URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:9901/healthz")]
        url: String,
    },
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: escape codes in a log collector's lines
    // make them unreadable and unsearchable.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli),
        Some(Command::Check) => check(&cli),
        Some(Command::FakeWeixin {
            listen,
            ref appid,
            ref secret,
        }) => {
            init_logging(cli.log_format, "info");
            fake_weixin(listen, appid, secret)
        }
        Some(Command::Healthcheck { ref url }) => healthcheck(url),
        Some(Command::Demo) => {
            init_logging(cli.log_format, "warn");
            match wxgate::demo::run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(&cli.config).map_err(|e| {
        eprintln!("{}: invalid configuration:", cli.config.display());
        for p in &e.problems {
            eprintln!("  {p}");
        }
        ExitCode::FAILURE
    })
}

fn check(cli: &Cli) -> ExitCode {
    match load(cli) {
        Ok(_) => {
            println!("{}: configuration is valid", cli.config.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(cli: &Cli) -> ExitCode {
    init_logging(cli.log_format, "info");
    let config = match load(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Signal handlers go in before wxgate can report ready: a SIGTERM from
    // then on must drain, not kill.
    let signals = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let (rt, signal) = match signals.and_then(|rt| {
        let signal = {
            let _context = rt.enter();
            wxgate::server::shutdown_signal()?
        };
        Ok((rt, signal))
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match wxgate::start(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(signal);
    running.shutdown();
    running.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn fake_weixin(listen: SocketAddr, appid: &str, secret: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fake = wxgate::fake::FakeWeixin::new(appid, secret);
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tracing::info!(addr = %listener.local_addr()?, appid, "fake WeChat listening");
        fake.serve(listener, wxgate::server::shutdown_signal()?).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake WeChat failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(url: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(wxgate::admin::probe(url, std::time::Duration::from_secs(3))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
