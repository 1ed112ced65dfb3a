//! `ProxyProcess`: the `respool` binary run as a child process, for tests
//! that measure the process itself (memory from `/proc/<pid>/status`) or read
//! its log. Its stderr (the log) is collected in the background. Dropping it
//! kills the child.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::wait;

/// A running `respool` child process.
pub struct ProxyProcess {
    /// A `Mutex` so that a test can wait for the exit through `&self`.
    child: Mutex<Child>,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// The log reader reached the end of stderr.
    log_ended: Arc<AtomicBool>,
}

impl ProxyProcess {
    /// Starts `respool --listen 127.0.0.1:<free port> --upstream <url>` with
    /// `extra` flags, and waits until it accepts connections.
    pub fn start(upstream_url: &str, extra: &[&str]) -> ProxyProcess {
        ProxyProcess::start_with_env(upstream_url, extra, &[])
    }

    /// Like [`start`](Self::start), with these environment variables set
    /// for the child (and nothing else of the test's environment changed).
    pub fn start_with_env(
        upstream_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        // Port 0: respool binds a port of its own and logs it. (A port
        // found free beforehand could be taken by another test's respool
        // meanwhile, and with SO_REUSEPORT both would share it silently.)
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut process = ProxyProcess::spawn(any, upstream_url, extra, env);
        let mut bound = None;
        wait::until(
            "respool to log the address it accepts on",
            wait::DEADLINE,
            || {
                process.assert_running();
                bound = listen_addr_in(&process.log());
                bound.is_some()
            },
        );
        process.addr = bound.expect("an address");
        process
    }

    /// Starts `respool --listen ADDR` on an address that may already be
    /// served (by an older respool: SO_REUSEPORT), and waits until this
    /// process logs that it accepts clients.
    pub fn start_on(addr: SocketAddr, upstream_url: &str, extra: &[&str]) -> ProxyProcess {
        let process = ProxyProcess::spawn(addr, upstream_url, extra, &[]);
        wait::until("the new respool to accept clients", wait::DEADLINE, || {
            process.assert_running();
            process.log().contains("respool accepting clients")
        });
        process
    }

    fn spawn(
        addr: SocketAddr,
        upstream_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ProxyProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_respool"));
        command.arg("--listen").arg(addr.to_string());
        // An empty URL: the upstream comes from elsewhere (a --config file).
        if !upstream_url.is_empty() {
            command.arg("--upstream").arg(upstream_url);
        }
        let mut child = command
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", env!("CARGO_BIN_EXE_respool")));
        let log = Arc::new(Mutex::new(String::new()));
        let log_ended = Arc::new(AtomicBool::new(false));
        if let Some(mut stderr) = child.stderr.take() {
            let log = log.clone();
            let log_ended = log_ended.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    }
                }
                log_ended.store(true, Ordering::Release);
            });
        }
        ProxyProcess {
            child: Mutex::new(child),
            addr,
            log,
            log_ended,
        }
    }

    /// Panics with the log if the process has exited.
    fn assert_running(&self) {
        if let Ok(Some(status)) = self.child().try_wait() {
            panic!("respool exited with {status}: {}", self.log());
        }
    }

    /// Sends SIGTERM (a graceful shutdown).
    pub fn terminate(&self) {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "kill -TERM {pid}: {status:?}"
        );
    }

    /// Waits until the process has exited and its whole log has been
    /// read, at most `timeout`; its status.
    pub fn wait_exit(&self, timeout: Duration) -> std::process::ExitStatus {
        let mut status = None;
        wait::until("respool to exit", timeout, || {
            if status.is_none() {
                status = self.child().try_wait().ok().flatten();
            }
            status.is_some() && self.log_ended.load(Ordering::Acquire)
        });
        status.expect("exited")
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmHWM`: kB there).
    pub fn status_bytes(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {field} in {path}"))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The TCP address in respool's "accepting clients" log line (text or JSON
/// format), once it is there.
fn listen_addr_in(log: &str) -> Option<SocketAddr> {
    let line = log
        .lines()
        .find(|l| l.contains("respool accepting clients"))?;
    let start = line
        .find("listen=")
        .map(|i| i + "listen=".len())
        .or_else(|| {
            line.find("\"listen\":\"")
                .map(|i| i + "\"listen\":\"".len())
        })?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
