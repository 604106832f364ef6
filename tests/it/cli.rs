//! The `wxgate` binary: `check`, environment overrides, `--help`/`--version`,
//! and a real process run end to end (JSON logs, a request through it,
//! SIGTERM/SIGINT with a request in flight, exit status 0).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_wxgate");

/// The binary with no `WXGATE_*` or `RUST_LOG` inherited from the test's environment.
fn wxgate() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("WXGATE_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")
}

/// A config file in a fresh temporary directory, removed on drop.
struct TempConfig {
    dir: PathBuf,
    path: PathBuf,
}

impl TempConfig {
    fn new(text: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wxgate-cli-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the wxgate binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const VALID: &str = r#"
[upstream]
url = "http://127.0.0.1:3000"
[weixin]
appid = "wx4f4bc4dec97d474b"
secret = "from-the-file"
"#;

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

#[test]
fn check_accepts_the_shipped_config_with_the_required_keys_from_the_environment() {
    // The template leaves the required keys unset: a copied config cannot
    // start with a placeholder appid or backend.
    let out = run(wxgate().args(["check", "--config"]).arg(shipped_config()));
    assert_eq!(out.status.code(), Some(1));
    for key in ["upstream.url", "weixin.appid", "weixin.secret"] {
        assert!(text(&out.stderr).contains(key), "{key}: {}", text(&out.stderr));
    }
    let out = run(wxgate()
        .args(["check", "--config"])
        .arg(shipped_config())
        .env("WXGATE_UPSTREAM__URL", "http://127.0.0.1:3000")
        .env("WXGATE_WEIXIN__APPID", "wx0123456789abcdef")
        .env("WXGATE_WEIXIN__SECRET", "s3cret-from-env"));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("configuration is valid"),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stdout).contains("s3cret-from-env"));
    assert!(!text(&out.stderr).contains("s3cret-from-env"));
}

#[test]
fn check_names_every_bad_key_and_exits_1() {
    let config = TempConfig::new(
        r#"
[server]
lisen = "0.0.0.0:8080"
shutdown_grace = "soon"
max_body_bytes = "big"
[upstream]
url = "ftp://backend"
[weixin]
appid = "not an appid!"
secret = "s"
[session]
ttl = "0s"
[login]
mode = "maybe"
[headers]
openid = "bad header"
[bogus]
a = 1
"#,
    );
    let out = run(wxgate().args(["check", "--config"]).arg(&config.path));
    assert_eq!(out.status.code(), Some(1), "stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    for key in [
        "server.lisen",
        "server.shutdown_grace",
        "server.max_body_bytes",
        "upstream.url",
        "weixin.appid",
        "session.ttl",
        "login.mode",
        "headers.openid",
        "bogus",
    ] {
        assert!(stderr.contains(key), "{key} is not named in:\n{stderr}");
    }
    // The file's name, then one indented line per problem.
    let mut lines = stderr.lines();
    assert!(
        lines.next().unwrap().contains(&config.path.display().to_string()),
        "{stderr}"
    );
    let problems: Vec<&str> = lines.collect();
    assert_eq!(problems.len(), 9, "{stderr}");
    assert!(problems.iter().all(|l| l.starts_with("  ")), "{stderr}");

    // Not TOML at all.
    let broken = TempConfig::new("[server\nlisten = ");
    let out = run(wxgate().args(["check", "--config"]).arg(&broken.path));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("TOML"), "{}", text(&out.stderr));

    // No such file.
    let out = run(wxgate().args(["check", "--config", "/nonexistent/wxgate.toml"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/wxgate.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn environment_variables_override_the_file() {
    let bad_url = TempConfig::new(&VALID.replace("http://127.0.0.1:3000", "ftp://nope"));
    let out = run(wxgate().args(["check", "--config"]).arg(&bad_url.path));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("upstream.url"));

    // The environment wins over the file...
    let out = run(wxgate()
        .args(["check", "--config"])
        .arg(&bad_url.path)
        .env("WXGATE_UPSTREAM__URL", "http://10.0.0.2:8000"));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // ...and is validated like the file.
    let good = TempConfig::new(VALID);
    let out = run(wxgate()
        .args(["check", "--config"])
        .arg(&good.path)
        .env("WXGATE_UPSTREAM__URL", "gopher://x"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("upstream.url"), "{}", text(&out.stderr));
    let out = run(wxgate()
        .args(["check", "--config"])
        .arg(&good.path)
        .env("WXGATE_SERVER__WORKERS", "many"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("server.workers"), "{}", text(&out.stderr));
    let out = run(wxgate()
        .args(["check", "--config"])
        .arg(&good.path)
        .env("WXGATE_SERVER__LISEN", "0.0.0.0:1"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("WXGATE_SERVER__LISEN"), "{stderr}");
    assert!(stderr.contains("did you mean WXGATE_SERVER__LISTEN"), "{stderr}");
}

#[test]
fn help_and_version() {
    let out = run(wxgate().arg("--help"));
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["Usage", "check", "--config", "--log-format", "--help", "--version"] {
        assert!(help.contains(word), "{word} missing from --help:\n{help}");
    }
    let out = run(wxgate().arg("--version"));
    assert!(out.status.success());
    // The version and the commit it was built from.
    let version = text(&out.stdout);
    let commit = version
        .trim()
        .strip_prefix(&format!("wxgate {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    assert!(!commit.is_empty(), "{version}");
    let out = run(wxgate().args(["check", "--help"]));
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("--config"));

    // Usage errors exit non-zero without starting anything.
    for args in [&["--log-format", "yaml"][..], &["--no-such-flag"], &["no-such-command"]] {
        let out = run(wxgate().args(args));
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!text(&out.stderr).is_empty());
    }
}

// ---------------------------------------------------------------------------
// The binary, end to end
// ---------------------------------------------------------------------------

/// A running `wxgate` process, killed on drop if the test fails first.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    fn spawn(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = wxgate();
        cmd.arg("--config").arg(config).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wxgate starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a stderr line that satisfies `f`.
    fn wait_line(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if f(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what} on stderr within 30 s; got:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit, then drains stderr.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "wxgate did not exit within 30 s; stderr:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, once the process is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn config_for(upstream: SocketAddr) -> TempConfig {
    TempConfig::new(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 2
shutdown_grace = "20s"
shutdown_delay = "0s"
[upstream]
url = "http://{upstream}"
timeout = "20s"
[weixin]
appid = "{APPID}"
api_base = "http://127.0.0.1:9"
"#
    ))
}

async fn get(url: String) -> Answer {
    send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

async fn wait_ready(admin: SocketAddr) {
    let ready = eventually(async || {
        let req = Request::get(format!("http://{admin}/readyz"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        matches!(
            tokio::time::timeout(Duration::from_secs(2), client().request(req)).await,
            Ok(Ok(res)) if res.status() == 200
        )
    })
    .await;
    assert!(ready, "/readyz never answered 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_logs_json_and_drains_on_sigterm() {
    let upstream = start_upstream().await;
    let config = config_for(upstream.addr.unwrap());
    let mut wxgate = Process::spawn(
        &config.path,
        &["--log-format", "json"],
        &[("WXGATE_WEIXIN__SECRET", "s3cret-in-env"), ("RUST_LOG", "info")],
    );

    // The bound addresses come from the start-up line (ports were 0).
    let line = wxgate.wait_line("\"wxgate listening\" line", |l| l.contains("wxgate listening"));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    let addr: SocketAddr = v["addr"].as_str().expect("addr field").parse().unwrap();
    let admin: SocketAddr = v["admin_addr"].as_str().expect("admin_addr field").parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    wait_ready(admin).await;

    // A request through it, with a spoofed identity header.
    let req = Request::get(format!("http://{addr}/through/the/binary?code=secret-code"))
        .header("x_wx_openid", "spoof")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = upstream.last();
    assert_eq!(r.uri, "/through/the/binary?code=secret-code");
    assert!(r.headers.get("x_wx_openid").is_none());
    assert_eq!(header_str(&r, "x-forwarded-for"), Some("127.0.0.1"));

    // A slow request in flight when SIGTERM arrives still completes.
    let slow = tokio::spawn(get(format!("http://{addr}/slow?ms=1500")));
    assert!(eventually(async || upstream.received().iter().any(|r| r.uri.starts_with("/slow"))).await);
    wxgate.signal("TERM");
    let a = tokio::time::timeout(Duration::from_secs(30), slow)
        .await
        .expect("the in-flight request finishes")
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "slow done");

    let status = wxgate.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", wxgate.seen.join("\n"));

    // Every stderr line is a JSON object.
    let lines: Vec<Value> = wxgate
        .seen
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("a stderr line is not JSON: {l}")))
        .collect();
    assert!(lines.iter().all(Value::is_object));
    // The access log line: method, path without the query, status, route, request id, client,
    // bytes both ways, latencies, outcome.
    let access = lines
        .iter()
        .find(|l| l["path"] == "/through/the/binary")
        .unwrap_or_else(|| panic!("no access log line:\n{}", wxgate.seen.join("\n")));
    assert_eq!(access["method"], "GET");
    assert_eq!(access["status"], 200);
    assert_eq!(access["route"], "passthrough");
    assert!(
        access["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{access}"
    );
    assert!(access["head_us"].is_u64() && access["total_us"].is_u64(), "{access}");
    // Who asked, with what, and what went back.
    assert_eq!(access["client"], "127.0.0.1", "{access}");
    assert_eq!(access["request_bytes"], 0, "{access}");
    assert!(access["response_bytes"].as_u64().is_some_and(|n| n > 0), "{access}");
    assert_eq!(access["outcome"], "ok", "{access}");
    let all = wxgate.seen.join("\n");
    assert!(!all.contains("secret-code"), "the query was logged:\n{all}");
    assert!(!all.contains("s3cret-in-env"), "the AppSecret was logged");
    assert!(lines.iter().any(|l| l["message"] == "SIGTERM: shutting down"), "{all}");
    assert!(lines.iter().any(|l| l["message"] == "stopped"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_on_sigint_with_text_logs() {
    let upstream = start_upstream().await;
    let config = config_for(upstream.addr.unwrap());
    let mut wxgate = Process::spawn(&config.path, &[], &[("WXGATE_WEIXIN__SECRET", "s")]);
    let line = wxgate.wait_line("\"wxgate listening\" line", |l| l.contains("wxgate listening"));
    assert!(
        serde_json::from_str::<Value>(&line).is_err(),
        "text logs by default: {line}"
    );
    assert!(
        !line.contains('\x1b'),
        "colour codes in logs that go to a pipe: {line:?}"
    );
    let field = |name: &str| -> SocketAddr {
        let start = line
            .find(&format!(" {name}="))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            + name.len()
            + 2;
        line[start..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let (addr, admin) = (field("addr"), field("admin_addr"));
    wait_ready(admin).await;
    assert_eq!(get(format!("http://{addr}/hi")).await.status, 200);
    wxgate.signal("INT");
    let status = wxgate.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", wxgate.seen.join("\n"));
    // Stopped: nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_ready_still_drains() {
    // Signal handlers must be in place before /readyz can say 200.
    let upstream = start_upstream().await;
    let config = config_for(upstream.addr.unwrap());
    for _ in 0..3 {
        let mut wxgate = Process::spawn(
            &config.path,
            &["--log-format", "json"],
            &[("WXGATE_WEIXIN__SECRET", "s")],
        );
        let line = wxgate.wait_line("\"wxgate listening\" line", |l| l.contains("wxgate listening"));
        let v: Value = serde_json::from_str(&line).unwrap();
        let admin: SocketAddr = v["admin_addr"].as_str().unwrap().parse().unwrap();
        wait_ready(admin).await;
        wxgate.signal("TERM");
        let status = wxgate.wait_exit();
        assert_eq!(status.code(), Some(0), "stderr:\n{}", wxgate.seen.join("\n"));
    }
}

#[test]
fn a_bad_config_stops_the_run_with_exit_1() {
    let bad = TempConfig::new(&VALID.replace("from-the-file", ""));
    let out = run(wxgate().arg("--config").arg(&bad.path));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("weixin.secret"), "{}", text(&out.stderr));
}

#[test]
fn a_port_in_use_is_named_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (key, listen, admin) in [
        ("server.listen", format!("127.0.0.1:{port}"), "127.0.0.1:0".to_string()),
        (
            "server.admin_listen",
            "127.0.0.1:0".to_string(),
            format!("127.0.0.1:{port}"),
        ),
    ] {
        let config = TempConfig::new(&format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n{VALID}"
        ));
        let out = run(wxgate().arg("--config").arg(&config.path));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("{key} 127.0.0.1:{port}")),
            "{key} not named:\n{stderr}"
        );
    }
}
