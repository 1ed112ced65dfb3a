//! The documentation cannot drift from the binary: every flag `respool
//! --help` (and `respool bench --help`) prints has a row in
//! docs/configuration.md with the same environment variable and default,
//! and every row names a flag that exists. The README's short flag table is
//! checked the same way, and no Markdown file links to a file that does not
//! exist or lies outside the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `--help` says of one flag.
#[derive(Debug, Default, PartialEq, Eq)]
struct Flag {
    env: Option<String>,
    default: Option<String>,
}

/// Parses clap's long help: `      --name <VALUE>` lines, then
/// `[env: NAME=…]` and `[default: …]` lines until the next flag.
fn help_flags(args: &[&str]) -> BTreeMap<String, Flag> {
    let out = Command::new(env!("CARGO_BIN_EXE_respool"))
        .args(args)
        .output()
        .expect("respool runs");
    assert!(out.status.success(), "respool {args:?} failed");
    let text = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if (indent == 2 || indent == 6) && (trimmed.starts_with("--") || trimmed.starts_with('-')) {
            let long = trimmed
                .split(", ")
                .find(|part| part.starts_with("--"))
                .and_then(|part| part.split_whitespace().next())
                .expect("a long flag name");
            current = Some(long.to_string());
            flags.insert(long.to_string(), Flag::default());
        } else if let Some(name) = &current {
            let flag = flags.get_mut(name).expect("inserted");
            if let Some(env) = trimmed.strip_prefix("[env: ") {
                flag.env = Some(env.trim_end_matches(']').trim_end_matches('=').to_string());
            } else if let Some(default) = trimmed.strip_prefix("[default: ") {
                flag.default = Some(default.trim_end_matches(']').to_string());
            }
        }
    }
    flags
}

/// The rows `| \`--flag\` | env | default | meaning |` of a Markdown table
/// whose first cell starts with `prefix`.
fn doc_rows(markdown: &str, prefix: &str) -> BTreeMap<String, (String, String)> {
    let mut rows = BTreeMap::new();
    for line in markdown.lines() {
        let Some(rest) = line.strip_prefix(&format!("| `{prefix}")) else {
            continue;
        };
        let cells: Vec<&str> = line.split('|').skip(1).map(str::trim).collect();
        let name = rest.split('`').next().expect("closing backtick");
        let flag = format!("--{name}");
        assert!(
            rows.insert(flag.clone(), (cells[1].to_string(), cells[2].to_string()))
                .is_none(),
            "{flag} has two rows"
        );
    }
    rows
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Compares help and rows: the same flags, each row naming the flag's
/// environment variable and showing its default.
fn check(help: &BTreeMap<String, Flag>, rows: &BTreeMap<String, (String, String)>, what: &str) {
    let in_help: Vec<_> = help.keys().collect();
    let in_doc: Vec<_> = rows.keys().collect();
    assert_eq!(
        in_help, in_doc,
        "{what}: flags in --help vs rows in the docs"
    );
    for (name, flag) in help {
        let (env, default) = &rows[name];
        match &flag.env {
            Some(var) => assert!(
                env.contains(&format!("`{var}`")),
                "{what} {name}: env {var} not in {env:?}"
            ),
            None => assert!(
                !env.contains("RESPOOL_"),
                "{what} {name}: --help names no env var, the row does: {env:?}"
            ),
        }
        if let Some(value) = &flag.default {
            assert!(
                default.contains(&format!("`{value}`")),
                "{what} {name}: default {value} not in {default:?}"
            );
        }
    }
}

#[test]
fn the_configuration_page_lists_every_flag_as_help_does() {
    let doc = read("docs/configuration.md");
    let (proxy_part, bench_part) = doc
        .split_once("## `respool bench` flags")
        .expect("a respool bench section");
    check(
        &help_flags(&["--help"]),
        &doc_rows(proxy_part, "--"),
        "respool",
    );
    check(
        &help_flags(&["bench", "--help"]),
        &doc_rows(bench_part, "bench --"),
        "respool bench",
    );
}

#[test]
fn the_readme_flag_table_matches_help() {
    let help = help_flags(&["--help"]);
    let rows = doc_rows(&read("README.md"), "--");
    assert!(
        rows.len() >= 8,
        "the README names the flags most people touch"
    );
    for (name, (env, default)) in &rows {
        let flag = help
            .get(name)
            .unwrap_or_else(|| panic!("README names {name}, which --help does not know"));
        if let Some(var) = &flag.env {
            assert!(
                env.contains(var.as_str()),
                "README {name}: {env:?} lacks {var}"
            );
        }
        if let Some(value) = &flag.default {
            assert!(
                default.contains(value.as_str()),
                "README {name}: {default:?} lacks {value}"
            );
        }
    }
}

/// Every Markdown file the repository tracks (skipping build output).
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | ".git" | "corpus" | "artifacts") {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

#[test]
fn links_point_at_files_inside_the_repository() {
    let root = repo().canonicalize().expect("repo path");
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() > 5, "found the docs");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|&c| c != ')').collect();
            let path = target.split('#').next().unwrap_or("");
            if path.is_empty() || path.starts_with("http://") || path.starts_with("https://") {
                continue;
            }
            let resolved = file.parent().expect("a parent").join(path);
            let inside = resolved
                .canonicalize()
                .map(|p| p.starts_with(&root))
                .unwrap_or(false);
            if !inside {
                broken.push(format!("{}: {target}", file.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to missing or outside files: {broken:#?}"
    );
}
