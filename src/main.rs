//! The `wxgate` command: run | check | config | fake-weixin | demo | healthcheck | keygen | jwks.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use wxgate::config::Config;

#[global_allocator]
static GLOBAL: wxgate::alloc::MiMalloc = wxgate::alloc::MiMalloc;

/// A reverse-proxy sidecar for WeChat Mini Program backends: wx.login code
/// exchange, sessions, and phone numbers, forwarded to the backend as trusted
/// headers.
#[derive(Parser)]
#[command(name = "wxgate", version = wxgate::VERSION, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> &Path {
        self.config.as_deref().unwrap_or(Path::new("config.toml"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run wxgate (the default when no command is given).
    Run(ConfigArg),
    /// Validate the configuration and exit: 0 if it is valid, 1 with every bad key named otherwise.
    Check(ConfigArg),
    /// Print the effective configuration (file, environment and defaults), secrets redacted.
    Config(ConfigArg),
    /// Serve a fake WeChat API (code2Session, tokens, getuserphonenumber) for tests and CI.
    FakeWeixin {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9911")]
        listen: SocketAddr,
        /// The AppID the fake accepts (wx0000000000fake00 when neither it nor --app is given).
        #[arg(long)]
        appid: Option<String>,
        /// The AppSecret of --appid.
        #[arg(long, default_value = "fake-secret", env = "WXGATE_FAKE_SECRET")]
        secret: String,
        /// One more mini program, as APPID:SECRET (repeatable); the first app the fake knows
        /// (--appid, else the first --app) is the default of /__fake/mint.
        #[arg(long = "app", value_name = "APPID:SECRET", value_parser = parse_fake_app)]
        apps: Vec<(String, String)>,
    },
    /// Write a new P-256 private key (PKCS#8 PEM, mode 0600) for signing identity assertions
    /// (`[assertion].key_file`); print its key id.
    Keygen {
        /// Where to write it; an existing file is not overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the JWKS (the public keys) of assertion key files, for a backend configured offline.
    Jwks {
        /// A key file: the signing key first, then previous ones (repeatable).
        #[arg(long = "key-file", value_name = "FILE", required = true)]
        key_files: Vec<PathBuf>,
    },
    /// Run wxgate, the fake WeChat and an echo backend in one process and walk
    /// through login, an authenticated request and a phone number.
    Demo,
    /// Probe a running wxgate's admin endpoint (for container health checks):
    /// exit 0 when it answers 200, 1 otherwise. Plain HTTP only.
    Healthcheck {
        /// The admin URL to probe (http://).
        #[arg(long, default_value = "http://127.0.0.1:9901/healthz")]
        url: String,
    },
}

/// Logs go to stderr through a bounded queue written by its own thread: a
/// worker never waits for the terminal or a log collector, and when the
/// queue is full lines are dropped and counted, not queued without bound.
/// That thread writes through a 64 KiB buffer that it flushes each time it
/// has emptied the queue: one `write` per batch of lines under load (nginx's
/// `access_log ... buffer=64k`), and a lone line still goes out at once.
fn init_logging(format: LogFormat, default: &str) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(64 * 1024)
        .thread_name("wxgate-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    wxgate::set_log_drop_counter(writer.error_counter());
    // Colours only on a terminal: escape codes in a log collector's lines
    // make them unreadable and unsearchable.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root_config = cli.config.config.is_some();
    match &cli.command {
        None => run(&cli.config, cli.log_format),
        Some(Command::Run(c)) => run(&merged(c, &cli.config), cli.log_format),
        Some(Command::Check(c)) => check(&merged(c, &cli.config), cli.log_format),
        Some(Command::Config(c)) => show_config(&merged(c, &cli.config), cli.log_format),
        Some(_) if root_config => {
            eprintln!("--config applies to run, check and config only");
            ExitCode::FAILURE
        }
        Some(Command::FakeWeixin {
            listen,
            appid,
            secret,
            apps,
        }) => {
            let _guard = init_logging(cli.log_format, "info");
            let first = match (appid, apps.is_empty()) {
                (Some(appid), _) => Some((appid.clone(), secret.clone())),
                (None, true) => Some(("wx0000000000fake00".to_owned(), secret.clone())),
                (None, false) => None,
            };
            fake_weixin(*listen, first.into_iter().chain(apps.iter().cloned()).collect())
        }
        Some(Command::Healthcheck { url }) => healthcheck(url),
        Some(Command::Keygen { out }) => keygen(out),
        Some(Command::Jwks { key_files }) => print_jwks(key_files),
        Some(Command::Demo) => {
            let _guard = init_logging(cli.log_format, "warn");
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

/// `wxgate --config F check` and `wxgate check --config F` alike.
fn merged(sub: &ConfigArg, root: &ConfigArg) -> ConfigArg {
    ConfigArg {
        config: sub.config.clone().or_else(|| root.config.clone()),
    }
}

/// A failure before wxgate serves: a JSON line with `--log-format json`
/// (logging is set up), plain text otherwise.
fn fail(format: LogFormat, logging: bool, message: &str) {
    if format == LogFormat::Json && logging {
        tracing::error!(error = message, "wxgate cannot start");
    } else {
        eprintln!("{message}");
    }
}

fn load(path: &Path, format: LogFormat, logging: bool) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        if format == LogFormat::Json && logging {
            for p in &e.problems {
                tracing::error!(config = %path.display(), problem = %p, "invalid configuration");
            }
        } else {
            eprintln!("{}: invalid configuration:", path.display());
            for p in &e.problems {
                eprintln!("  {p}");
            }
        }
        ExitCode::FAILURE
    })
}

fn check(c: &ConfigArg, format: LogFormat) -> ExitCode {
    let _guard = (format == LogFormat::Json).then(|| init_logging(format, "info"));
    match load(c.path(), format, _guard.is_some()) {
        Ok(_) => {
            println!("{}: configuration is valid", c.path().display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn show_config(c: &ConfigArg, format: LogFormat) -> ExitCode {
    let _guard = (format == LogFormat::Json).then(|| init_logging(format, "info"));
    match load(c.path(), format, _guard.is_some()) {
        Ok(config) => {
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(c: &ConfigArg, format: LogFormat) -> ExitCode {
    let _guard = init_logging(format, "info");
    let config = match load(c.path(), format, true) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Signal handlers go in before wxgate can report ready: a SIGTERM from
    // then on must drain, not kill.
    let signals = wxgate::net_runtime();
    let (rt, signal) = match signals.and_then(|rt| {
        let signal = {
            let _context = rt.enter();
            wxgate::shutdown_signal()?
        };
        Ok((rt, signal))
    }) {
        Ok(s) => s,
        Err(e) => {
            fail(format, true, &format!("cannot listen for signals: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let running = match wxgate::start(config) {
        Ok(r) => r,
        Err(e) => {
            fail(format, true, &format!("cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(signal) {
        wxgate::Signal::Terminate => running.shutdown(),
        wxgate::Signal::Interrupt => running.shutdown_now(),
    }
    running.join();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// `APPID:SECRET` of `fake-weixin --app`.
fn parse_fake_app(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((appid, secret)) if !appid.is_empty() && !secret.is_empty() => Ok((appid.into(), secret.into())),
        _ => Err("expected APPID:SECRET, like wx0000000000fake01:secret-b".into()),
    }
}

fn fake_weixin(listen: SocketAddr, apps: Vec<(String, String)>) -> ExitCode {
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
    let appids: Vec<String> = apps.iter().map(|(a, _)| a.clone()).collect();
    let fake = wxgate::fake::FakeWeixin::with_apps(apps);
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tracing::info!(addr = %listener.local_addr()?, appids = %appids.join(","), "fake WeChat listening");
        let signal = wxgate::shutdown_signal()?;
        fake.serve(listener, async move {
            signal.await;
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake WeChat failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: &Path) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (key, pem) = match wxgate::assertion::KeyPair::generate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("keygen: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Created with its final mode: never readable by others, not even briefly.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| f.write_all(pem.as_bytes()).and_then(|()| f.sync_all()));
    match written {
        Ok(()) => {
            println!("wrote {} (kid {})", out.display(), key.kid());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keygen: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn print_jwks(files: &[PathBuf]) -> ExitCode {
    let mut keys = Vec::new();
    for file in files {
        match wxgate::assertion::KeyPair::from_file(&file.to_string_lossy()) {
            Ok(k) => keys.push(k),
            Err(e) => {
                eprintln!("jwks: {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{}", wxgate::assertion::jwks(&keys));
    ExitCode::SUCCESS
}

fn healthcheck(url: &str) -> ExitCode {
    let rt = match wxgate::net_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(wxgate::probe(url, std::time::Duration::from_secs(3))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
