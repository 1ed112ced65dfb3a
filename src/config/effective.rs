//! The effective value of every flag after the command line, the
//! environment and the config file have been weighed, and where each came
//! from: what `respool check-config` prints (secrets masked) and what a
//! reload compares to find what changed.

use std::collections::BTreeSet;
use std::fmt::Write;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The command line.
    Flag,
    /// A `RESPOOL_…` environment variable.
    Env,
    /// The `--config` file.
    File,
    /// The flag's default.
    Default,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
        }
    }
}

/// One flag's effective value.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    /// The flag's long name, which is also its config file key.
    pub name: String,
    /// Its values as given (several for a repeatable flag); none when unset.
    values: Vec<String>,
    /// The flag holds a secret (its env value is hidden in `--help`):
    /// its values are never shown.
    pub secret: bool,
    /// An on/off switch (a TOML boolean).
    switch: bool,
    /// Takes several values (a TOML array).
    many: bool,
    /// Where the value came from (`None`: unset).
    source: Option<Source>,
}

impl Setting {
    /// The value as a TOML right-hand side, secrets masked.
    pub fn shown(&self) -> String {
        let one = |v: &String| {
            let v = if self.secret {
                mask(&self.name, v)
            } else {
                v.clone()
            };
            if self.switch || (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())) {
                v
            } else {
                format!("{v:?}")
            }
        };
        if self.many {
            let items: Vec<String> = self.values.iter().map(one).collect();
            format!("[{}]", items.join(", "))
        } else {
            self.values.first().map(one).unwrap_or_default()
        }
    }
}

/// Every flag's effective value. It holds secrets in the clear, so it has
/// no `Debug`: it is shown only through [`Effective::render`].
#[derive(Clone, Default)]
pub struct Effective {
    pub(crate) settings: Vec<Setting>,
}

impl Effective {
    /// Reads every settable flag's value and source from the final parse.
    pub(super) fn from_matches(
        cmd: &Command,
        matches: &ArgMatches,
        from_file: &BTreeSet<String>,
    ) -> Effective {
        let settings = super::file::settable(cmd)
            .filter_map(|arg| {
                let name = arg.get_long()?.to_owned();
                let id = arg.get_id().as_str();
                let values: Vec<String> = matches
                    .get_raw(id)
                    .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                let source = match matches.value_source(id) {
                    _ if from_file.contains(&name) => Some(Source::File),
                    Some(ValueSource::CommandLine) => Some(Source::Flag),
                    Some(ValueSource::EnvVariable) => Some(Source::Env),
                    Some(ValueSource::DefaultValue) => Some(Source::Default),
                    _ => None,
                };
                // A hidden flag (kept for compatibility) is shown only when set.
                if arg.is_hide_set()
                    && !matches!(source, Some(Source::Flag | Source::Env | Source::File))
                {
                    return None;
                }
                Some(Setting {
                    name,
                    values,
                    secret: arg.is_hide_env_values_set(),
                    switch: matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse),
                    many: matches!(arg.get_action(), ArgAction::Append),
                    source,
                })
            })
            .collect();
        Effective { settings }
    }

    /// The effective configuration as a config file, one `key = value` per
    /// flag with its source as a comment; secrets masked, unset flags
    /// commented out.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# respool's effective configuration (flag > env > file > default); secrets are masked.\n",
        );
        for s in &self.settings {
            let _ = match s.source {
                Some(source) if !s.values.is_empty() || s.many => {
                    writeln!(out, "{} = {}  # {}", s.name, s.shown(), source.as_str())
                }
                _ => writeln!(out, "# {} (not set)", s.name),
            };
        }
        out
    }

    /// A flag's value as `check-config` shows it (secrets masked), by its
    /// long name; `None` when unset or unknown.
    pub fn value(&self, name: &str) -> Option<String> {
        let s = self.settings.iter().find(|s| s.name == name)?;
        s.source?;
        (!s.values.is_empty() || s.many).then(|| s.shown())
    }

    /// Where a flag's value came from, by its long name.
    pub fn source(&self, name: &str) -> Option<Source> {
        self.settings.iter().find(|s| s.name == name)?.source
    }

    /// Puts `setting` in place of the one of the same name.
    pub(crate) fn replace(&mut self, setting: Setting) {
        if let Some(s) = self.settings.iter_mut().find(|s| s.name == setting.name) {
            *s = setting;
        }
    }

    /// The settings whose values differ between `self` and `new`, by name.
    pub(crate) fn changed<'a>(&'a self, new: &'a Effective) -> Vec<(&'a Setting, &'a Setting)> {
        self.settings
            .iter()
            .filter_map(|old| {
                let now = new.settings.iter().find(|n| n.name == old.name)?;
                (old.values != now.values).then_some((old, now))
            })
            .collect()
    }
}

/// A secret flag's value with the secret part replaced: the password of a
/// URL, the password of `name:password`, or all of it.
fn mask(name: &str, value: &str) -> String {
    const MASK: &str = "***";
    match name {
        "upstream" => match ::url::Url::parse(value) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some(MASK));
                url.to_string()
            }
            Ok(url) => url.to_string(),
            Err(_) => MASK.into(),
        },
        "user" => match value.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}"),
            None => MASK.into(),
        },
        _ => MASK.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask("upstream", "redis://alice:hunter2@h:1/2"),
            "redis://alice:***@h:1/2"
        );
        assert_eq!(mask("upstream", "redis://h:1"), "redis://h:1");
        assert_eq!(mask("user", "bob:pw"), "bob:***");
        assert_eq!(mask("requirepass", "pw"), "***");
    }
}
