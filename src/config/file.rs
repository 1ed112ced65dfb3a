//! `--config FILE`: a TOML file whose keys are the flags' long names
//! (`max-connections = 4`, `user = ["alice:pw"]`, `timeout = "5s"`).
//!
//! The file has no schema of its own: every key is looked up among the clap
//! arguments of [`Flags`](super::Flags), its value is checked by that argument's own value
//! parser, and the accepted values become `--name=value` arguments parsed
//! together with the command line. Flags and file therefore cannot drift.
//! Precedence is flag > env > file > default: a key is passed on only when
//! clap says the flag's value would otherwise be its default.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::de::{DeTable, DeValue};

/// The file's settings as arguments, and which flags they set.
pub(super) struct FileArgs {
    /// `--name=value` for every file key that no flag or env variable overrides.
    pub args: Vec<OsString>,
    /// Long names of the flags the file set (and that were not overridden).
    pub set: BTreeSet<String>,
}

/// The arguments of `cmd` that a file may set: every flag with a long
/// name, but not `--help`, `--version` or `--config` itself.
pub(super) fn settable(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        a.get_long().is_some_and(|l| l != "config")
            && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
    })
}

/// Reads `path` and turns its keys into arguments. `given` is what the
/// command line and environment said, to leave out what they override.
pub(super) fn read(path: &Path, cmd: &Command, given: &ArgMatches) -> Result<FileArgs, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {name}: {e}"))?;
    let table = DeTable::parse(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(&text, s.start));
        format!("{name}:{line}: invalid TOML: {}", e.message())
    })?;
    let mut out = FileArgs {
        args: Vec::new(),
        set: BTreeSet::new(),
    };
    for (key, value) in table.get_ref().iter() {
        let line = line_of(&text, key.span().start);
        let key = key.get_ref().as_ref();
        let at = |msg: String| format!("{name}:{line}: {msg}");
        let arg = settable(cmd)
            .find(|a| a.get_long() == Some(key))
            .ok_or_else(|| at(unknown_key(cmd, key)))?;
        let values = to_values(arg, key, value.get_ref()).map_err(at)?;
        for v in &values {
            check_value(arg, v).map_err(|e| at(format!("'{key}': {e}")))?;
        }
        // Flag > env > file: the file only fills in what would be a default.
        let overridden = matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if overridden {
            continue;
        }
        out.set.insert(key.to_owned());
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => {
                if values.first().is_some_and(|v| v == "true") {
                    out.args.push(format!("--{key}").into());
                }
            }
            _ => out.args.extend(
                values
                    .iter()
                    .map(|v| OsString::from(format!("--{key}={v}"))),
            ),
        }
    }
    Ok(out)
}

/// "unknown key 'x'", with the nearest flag name when one is close.
fn unknown_key(cmd: &Command, key: &str) -> String {
    if key == "config" {
        return "'config' cannot be set in a config file".into();
    }
    let nearest = settable(cmd)
        .filter_map(|a| a.get_long())
        .map(|l| (strsim::jaro_winkler(key, l), l))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match nearest {
        Some((score, long)) if score > 0.8 => {
            format!("unknown key '{key}'; did you mean '{long}'?")
        }
        _ => format!("unknown key '{key}': keys are respool's flag names without the dashes (see `respool --help`)"),
    }
}

/// A TOML value as the strings the flag takes on the command line.
fn to_values(arg: &Arg, key: &str, value: &DeValue<'_>) -> Result<Vec<String>, String> {
    let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let many = matches!(arg.get_action(), ArgAction::Append);
    let expected = if switch {
        "true or false"
    } else if many {
        "a string or an array of strings"
    } else {
        "a string, a number or a boolean"
    };
    let wrong = |what: &str| format!("'{key}' expects {expected}, not {what}");
    let scalar = |v: &DeValue<'_>| -> Result<String, String> {
        match v {
            DeValue::Boolean(b) => Ok(b.to_string()),
            _ if switch => Err(wrong(v.type_str())),
            DeValue::String(s) => Ok(s.to_string()),
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                i64::from_str_radix(&digits, i.radix())
                    .map(|n| n.to_string())
                    .map_err(|_| wrong("an integer this large"))
            }
            other => Err(wrong(other.type_str())),
        }
    };
    match value {
        DeValue::Array(items) if many => items.iter().map(|i| scalar(i.get_ref())).collect(),
        DeValue::Array(_) => Err(wrong("an array (it takes one value)")),
        other => Ok(vec![scalar(other)?]),
    }
}

/// Runs `value` through the argument's own value parser (clap's), so a
/// file value is refused for exactly the reasons the flag's would be.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return Ok(());
    }
    // The flag itself, alone: without its relations to other flags, one
    // value at a time.
    let probe = arg
        .clone()
        .requires(clap::builder::Resettable::<clap::Id>::Reset)
        .conflicts_with(clap::builder::Resettable::<clap::Id>::Reset)
        .required(false)
        .action(ArgAction::Set)
        .value_delimiter(None);
    let cmd = Command::new("respool")
        .arg(probe)
        .disable_help_flag(true)
        .disable_version_flag(true);
    let values: Vec<&str> = match arg.get_value_delimiter() {
        Some(d) => value.split(d).collect(),
        None => vec![value],
    };
    for v in values {
        let arg = format!("--{}={v}", arg.get_long().unwrap_or_default());
        cmd.clone()
            .try_get_matches_from(["respool", arg.as_str()])
            .map_err(|e| first_lines(&e.to_string()))?;
    }
    Ok(())
}

/// The substance of a clap error: its first line without "error: ", and the
/// possible values when it lists them.
fn first_lines(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let mut out = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    if let Some(possible) = lines.find(|l| l.trim_start().starts_with("[possible values")) {
        out.push(' ');
        out.push_str(possible.trim());
    }
    out
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
