//! `--config FILE` and `respool check-config`: every flag is a file key that
//! means what the flag means, the precedence flag > env > file > default,
//! unknown keys and wrong types refused with the line, and secrets never
//! printed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use rcgen::{CertificateParams, KeyPair};
use respool::config::{Flags, Source};
use respool::Config;
use tempfile::TempDir;

use support::ProxyProcess;

/// Writes `text` to `name` in `dir` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a test file");
    path
}

/// `respool check-config FILE` with `env` set; its exit success, stdout and stderr.
fn check_config(file: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_respool"))
        .arg("check-config")
        .arg(file)
        .envs(env.iter().copied())
        .output()
        .expect("running respool check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `respool --config <file>` would run with, or its error.
fn load_file(dir: &Path, toml: &str, flags: &[&str]) -> Result<respool::config::Loaded, String> {
    let file = write(dir, "respool.toml", toml);
    let file = file.display().to_string();
    let args = [&["respool", "--config", file.as_str()][..], flags].concat();
    Config::load(args).map_err(|e| e.to_string())
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A value each flag takes, with the other flags it needs; the file's
/// and the command line's version of each must mean the same. A flag
/// added without a sample here fails the test, so none goes unchecked.
fn sample(name: &str, files: &Files) -> Option<Vec<(&'static str, String)>> {
    let one = |k: &'static str, v: &str| Some(vec![(k, v.to_owned())]);
    let rediss = ("upstream", "rediss://127.0.0.1:7002".to_owned());
    let insecure = ("upstream-tls-insecure", "true".to_owned());
    let sentinel = [
        ("sentinel", "127.0.0.1:26399".to_owned()),
        ("sentinel-master", "mymaster".to_owned()),
    ];
    match name {
        "listen" => one("listen", "127.0.0.1:7000"),
        "admin-user" => Some(vec![
            ("user", "ops:pw".to_owned()),
            ("admin-user", "ops".to_owned()),
        ]),
        "slowlog-threshold" => one("slowlog-threshold", "5ms"),
        "metrics-listen" => one("metrics-listen", "127.0.0.1:9121"),
        "cluster" => one("cluster", "true"),
        "cluster-refresh-interval" => Some(vec![
            ("cluster", "true".to_owned()),
            ("cluster-refresh-interval", "7s".to_owned()),
        ]),
        "cluster-refresh-min-interval" => Some(vec![
            ("cluster", "true".to_owned()),
            ("cluster-refresh-min-interval", "70ms".to_owned()),
        ]),
        "slowlog-max-len" => one("slowlog-max-len", "7"),
        "slowlog-args" => one("slowlog-args", "true"),
        "unix-permissions" => Some(vec![
            ("listen", "unix:/tmp/respool-sample.sock".to_owned()),
            ("unix-permissions", "0600".to_owned()),
        ]),
        "unix-takeover" => Some(vec![
            ("listen", "unix:/tmp/respool-sample.sock".to_owned()),
            ("unix-takeover", "true".to_owned()),
        ]),
        "max-clients" => one("max-clients", "7"),
        "threads" => one("threads", "1"),
        "shutdown-timeout" => one("shutdown-timeout", "7s"),
        "upstream" => one("upstream", "redis://u:pw@127.0.0.1:7001/2"),
        "upstream-password" => one("upstream-password", "pw"),
        "validate" => one("validate", "ping"),
        "probe-prefix" => one("probe-prefix", "p:x"),
        "probe-ttl" => one("probe-ttl", "9s"),
        "require-upstream" => one("require-upstream", "true"),
        "max-connections" => one("max-connections", "3"),
        "max-pinned" => one("max-pinned", "5"),
        "min-idle" => one("min-idle", "2"),
        "connect-timeout" => one("connect-timeout", "3s"),
        "checkout-timeout" => one("checkout-timeout", "4s"),
        "health-check-interval" => one("health-check-interval", "9s"),
        "keepalive" => one("keepalive", "8s"),
        "batch-writes" => one("batch-writes", "off"),
        "read-buffer-size" => one("read-buffer-size", "32KiB"),
        "timeout" => one("timeout", "6s"),
        "hold-timeout" => one("hold-timeout", "2s"),
        "retries" => one("retries", "3"),
        "backoff-base" => one("backoff-base", "10ms"),
        "backoff-cap" => one("backoff-cap", "1s"),
        "max-bulk-length" => one("max-bulk-length", "1MiB"),
        "max-pending-per-client" => one("max-pending-per-client", "9"),
        "client-output-limit" => one("client-output-limit", "1MiB"),
        "max-reply-memory" => one("max-reply-memory", "2MiB"),
        "client-idle-timeout" => one("client-idle-timeout", "30s"),
        "request-read-timeout" => one("request-read-timeout", "3s"),
        "requirepass" => one("requirepass", "pw"),
        "user" => one("user", "alice:pw"),
        "users-file" => one("users-file", &files.users),
        "max-identities" => one("max-identities", "5"),
        "identity-idle-timeout" => one("identity-idle-timeout", "5s"),
        "deny-command" => one("deny-command", "KEYS"),
        "tls-cert" | "tls-key" => Some(vec![
            ("tls-cert", files.cert.clone()),
            ("tls-key", files.key.clone()),
        ]),
        "tls-ca" => Some(vec![
            ("tls-cert", files.cert.clone()),
            ("tls-key", files.key.clone()),
            ("tls-ca", files.cert.clone()),
        ]),
        // Without a TLS listener it has nothing to time.
        "tls-handshake-timeout" => Some(vec![
            ("tls-cert", files.cert.clone()),
            ("tls-key", files.key.clone()),
            ("tls-handshake-timeout", "3s".into()),
        ]),
        "upstream-ca" => Some(vec![rediss, ("upstream-ca", files.cert.clone())]),
        "upstream-cert" | "upstream-key" => Some(vec![
            rediss,
            insecure,
            ("upstream-cert", files.cert.clone()),
            ("upstream-key", files.key.clone()),
        ]),
        "upstream-tls-server-name" => Some(vec![
            rediss,
            insecure,
            ("upstream-tls-server-name", "cache.example".into()),
        ]),
        "upstream-tls-insecure" => Some(vec![rediss, insecure]),
        "sentinel" | "sentinel-master" => Some(sentinel.to_vec()),
        "sentinel-user" => Some(
            [
                &sentinel[..],
                &[
                    ("sentinel-user", "s".to_owned()),
                    ("sentinel-password", "spw".to_owned()),
                ],
            ]
            .concat(),
        ),
        "sentinel-password" => {
            Some([&sentinel[..], &[("sentinel-password", "spw".to_owned())]].concat())
        }
        "sentinel-tls" => Some([&sentinel[..], &[("sentinel-tls", "true".to_owned())]].concat()),
        "read-from" => one("read-from", "prefer-replica"),
        "max-replica-lag" => one("max-replica-lag", "3s"),
        "replica-check-interval" => one("replica-check-interval", "1s"),
        "read-your-writes" => one("read-your-writes", "off"),
        "log-format" => one("log-format", "json"),
        "log-level" => one("log-level", "debug"),
        _ => None,
    }
}

/// Files some flags name.
struct Files {
    users: String,
    cert: String,
    key: String,
}

fn files(dir: &Path) -> Files {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let path = |name: &str, text: &str| write(dir, name, text).display().to_string();
    Files {
        users: path("users.txt", "bob:secret\n"),
        cert: path("cert.pem", &cert.pem()),
        key: path("key.pem", &key.serialize_pem()),
    }
}

#[test]
fn every_flag_is_a_file_key_that_means_the_same() {
    let dir = TempDir::new().expect("temp dir");
    let files = files(dir.path());
    let cmd = Flags::command();
    let default = format!(
        "{:?}",
        Config::parse_from_args(["respool"]).expect("defaults")
    );
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let Some(name) = arg.get_long() else { continue };
        if matches!(name, "help" | "version" | "config") {
            continue;
        }
        let pairs = sample(name, &files)
            .unwrap_or_else(|| panic!("--{name} has no sample value in this test: add one"));
        let switch = |k: &str| {
            matches!(
                k,
                "require-upstream"
                    | "upstream-tls-insecure"
                    | "sentinel-tls"
                    | "unix-takeover"
                    | "slowlog-args"
                    | "cluster"
            )
        };
        let mut argv = vec!["respool".to_owned()];
        let mut toml = String::new();
        for (k, v) in &pairs {
            if switch(k) {
                argv.push(format!("--{k}"));
                toml.push_str(&format!("{k} = {v}\n"));
            } else {
                argv.push(format!("--{k}={v}"));
                let v = if *k == "user" || *k == "deny-command" || *k == "sentinel" {
                    format!("[{}]", quoted(v))
                } else if v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0') {
                    // (TOML numbers have no leading zero: a mode is a string.)
                    v.clone()
                } else {
                    quoted(v)
                };
                toml.push_str(&format!("{k} = {v}\n"));
            }
        }
        let by_flag =
            Config::load(&argv).unwrap_or_else(|e| panic!("--{name} as a flag {argv:?}: {e}"));
        let by_file = load_file(dir.path(), &toml, &[])
            .unwrap_or_else(|e| panic!("{name} as a file key:\n{toml}\n{e}"));
        let (flag_cfg, file_cfg) = (
            format!("{:?}", by_flag.config),
            format!("{:?}", by_file.config),
        );
        assert_eq!(flag_cfg, file_cfg, "{name}: file and flag differ");
        assert_eq!(
            by_flag.effective.value(name),
            by_file.effective.value(name),
            "{name}"
        );
        assert_eq!(by_file.effective.source(name), Some(Source::File), "{name}");
        // The sample changes something (the hidden, ignored --probe-ttl aside).
        if name != "probe-ttl" {
            assert_ne!(
                file_cfg, default,
                "{name}: the sample value changed nothing"
            );
        }
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} flags checked");
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let dir = TempDir::new().expect("temp dir");
    let loaded = load_file(
        dir.path(),
        "max-pinned = 9\nmax-connections = 4\nuser = [\"a:b\", \"c:d\"]\n",
        &["--max-pinned", "3", "--user", "x:y"],
    )
    .expect("valid");
    let e = &loaded.effective;
    assert_eq!(e.value("max-pinned").as_deref(), Some("3"));
    assert_eq!(e.source("max-pinned"), Some(Source::Flag));
    assert_eq!(e.value("max-connections").as_deref(), Some("4"));
    assert_eq!(e.source("max-connections"), Some(Source::File));
    // A repeatable flag on the command line replaces the file's list.
    assert_eq!(e.value("user").as_deref(), Some("[\"x:***\"]"));
    assert_eq!(e.source("timeout"), Some(Source::Default));
}

#[test]
fn env_wins_over_the_file_and_flags_over_env() {
    let dir = TempDir::new().expect("temp dir");
    let file = write(
        dir.path(),
        "respool.toml",
        "max-connections = 4\nmax-pinned = 9\nmin-idle = 3\n",
    );
    let env = [
        ("RESPOOL_MAX_PINNED", "7"),
        ("RESPOOL_MIN_IDLE", "2"),
        ("RESPOOL_CONFIG", file.to_str().expect("utf-8 path")),
    ];
    // check-config: the file with the environment on top.
    let (ok, out, err) = check_config(&file, &env[..2]);
    assert!(ok, "{err}");
    assert!(out.contains("max-connections = 4  # file"), "{out}");
    assert!(out.contains("max-pinned = 7  # env"), "{out}");
    // The proxy itself, with the file named by RESPOOL_CONFIG: a flag beats
    // the environment, which beats the file.
    let proxy = ProxyProcess::start_with_env("redis://127.0.0.1:1", &["--min-idle", "1"], &env);
    // The log is read by a thread of its own: wait for the line.
    support::wait::until("the start-up line", support::wait::DEADLINE, || {
        proxy.log().contains("starting respool")
    });
    let log = proxy.log();
    for expected in ["max_connections: 4", "max_pinned: 7", "min_idle: 1"] {
        assert!(log.contains(expected), "{expected} missing from:\n{log}");
    }
}

#[test]
fn an_unknown_key_is_refused_with_its_line_and_the_nearest_flag() {
    let dir = TempDir::new().expect("temp dir");
    let e = load_file(
        dir.path(),
        "# pool\nmax-pinned = 4\nmax-conections = 3\n",
        &[],
    )
    .err()
    .expect("refused");
    assert!(e.contains("respool.toml:3:"), "{e}");
    assert!(e.contains("unknown key 'max-conections'"), "{e}");
    assert!(e.contains("did you mean 'max-connections'"), "{e}");

    let e = load_file(dir.path(), "\n\nfrobnicate = 1\n", &[])
        .err()
        .expect("refused");
    assert!(e.contains(":3: unknown key 'frobnicate'"), "{e}");
}

#[test]
fn wrong_types_name_the_line_and_what_was_expected() {
    let dir = TempDir::new().expect("temp dir");
    for (toml, line, expected) in [
        (
            "timeout = \"soon\"",
            1,
            "invalid value 'soon' for '--timeout",
        ),
        (
            "\nmax-connections = 2.5",
            2,
            "expects a string, a number or a boolean, not float",
        ),
        (
            "max-connections = [1, 2]",
            1,
            "not an array (it takes one value)",
        ),
        (
            "validate = \"maybe\"",
            1,
            "[possible values: off, ping, write]",
        ),
        ("require-upstream = \"yes\"", 1, "expects true or false"),
        ("max-connections = 0", 1, "'max-connections'"),
        ("[pool]\nmax-connections = 1", 1, "unknown key 'pool'"),
    ] {
        let e = load_file(dir.path(), toml, &[])
            .err()
            .unwrap_or_else(|| panic!("{toml} accepted"));
        assert!(e.contains(&format!("respool.toml:{line}:")), "{toml}: {e}");
        assert!(e.contains(expected), "{toml}: {e}");
    }
    // Invalid TOML itself, with its line.
    let e = load_file(dir.path(), "a = 1\nb = \n", &[])
        .err()
        .expect("refused");
    assert!(e.contains("respool.toml:2: invalid TOML"), "{e}");
}

#[test]
fn check_config_masks_every_secret() {
    let dir = TempDir::new().expect("temp dir");
    let file = write(
        dir.path(),
        "respool.toml",
        r#"
upstream = "redis://app:url-secret-1@127.0.0.1:7001/0"
upstream-password = "upstream-secret-2"
requirepass = "client-secret-3"
user = ["alice:user-secret-4", "bob:user-secret-5"]
sentinel = ["127.0.0.1:26399"]
sentinel-master = "mymaster"
sentinel-password = "sentinel-secret-6"
max-connections = 2
"#,
    );
    let (ok, out, err) = check_config(&file, &[]);
    assert!(ok, "{err}");
    for secret in [
        "url-secret-1",
        "upstream-secret-2",
        "client-secret-3",
        "user-secret-4",
        "user-secret-5",
        "sentinel-secret-6",
    ] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed:\n{out}{err}"
        );
    }
    assert!(
        out.contains("upstream = [\"redis://app:***@127.0.0.1:7001/0\"]  # file"),
        "{out}"
    );
    assert!(
        out.contains("user = [\"alice:***\", \"bob:***\"]  # file"),
        "{out}"
    );
    assert!(out.contains("requirepass = \"***\"  # file"), "{out}");
    assert!(out.contains("max-connections = 2  # file"), "{out}");
    assert!(out.contains("timeout = \"5s\"  # default"), "{out}");

    // An invalid file: the error, a non-zero exit, and still no secret.
    let bad = write(
        dir.path(),
        "bad.toml",
        "requirepass = \"client-secret-3\"\nbackoff-base = \"5s\"\nbackoff-cap = \"1s\"\n",
    );
    let (ok, out, err) = check_config(&bad, &[]);
    assert!(!ok, "accepted:\n{out}");
    assert!(
        err.contains("'--backoff-base' must not exceed '--backoff-cap'"),
        "{err}"
    );
    assert!(!out.contains("client-secret-3") && !err.contains("client-secret-3"));
}

#[test]
fn check_config_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/respool.toml");
    let (ok, out, err) = check_config(&example, &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("deny-command = [\"FLUSHALL\", \"FLUSHDB\", \"DEBUG\"]  # file"),
        "{out}"
    );
    // The example's values are the defaults where it says so.
    assert!(out.contains("max-pinned = 64  # file"), "{out}");
}

#[test]
fn check_config_reports_a_missing_file() {
    let (ok, _, err) = check_config(Path::new("/nonexistent/respool.toml"), &[]);
    assert!(!ok);
    assert!(
        err.contains("cannot read config file /nonexistent/respool.toml"),
        "{err}"
    );
}
