//! Configuration files (`relay.yaml`, `agent.yaml`): parsing, `${VAR}` interpolation and the one
//! error format every mistake is reported in: `file:line: key: what is wrong and how to fix it`.
//!
//! Parsing takes the text and an environment lookup, so tests need neither disk nor process
//! environment. Unknown keys are errors (a typo must never silently disable a setting), and every
//! check that can run while deserialising does, so its error carries the line it came from.

pub mod agent;
pub mod cluster;
pub mod inspect;
pub mod keepalive;
pub mod postgres;
pub mod proxy;
pub mod relay;
pub mod store;
pub mod tunnel;
mod urls;
mod values;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use values::{ByteSize, EnvString, Secret, duration, opt_duration, parse_scalar};

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration file: {source} (check the path and that this user may read it)", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but something in it is wrong.
    #[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file name (or `<flags>` for command-line values).
        origin: String,
        /// The line of the offending key, when known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl ConfigError {
    /// An error not tied to a line, e.g. a contradiction between two keys or a missing flag.
    pub fn invalid(origin: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            origin: origin.into(),
            line: None,
            message: message.into(),
        }
    }
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The variables one file refers to, looked up before parsing.
type EnvSnapshot = std::collections::HashMap<String, Option<String>>;

thread_local! {
    // Set only for the duration of one parse; serde deserialises synchronously on this thread.
    static ENV_SNAPSHOT: RefCell<Option<EnvSnapshot>> = const { RefCell::new(None) };
}

fn lookup_env(name: &str) -> Option<String> {
    ENV_SNAPSHOT.with(|cell| match cell.borrow().as_ref() {
        Some(snapshot) => snapshot.get(name).cloned().flatten(),
        None => std::env::var(name).ok(),
    })
}

/// Parse `text` (named `origin` in errors), resolving `${NAME}` through `env`.
pub fn parse_with_env<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    env: Lookup<'_>,
) -> Result<T, ConfigError> {
    // Copy the lookup results: the thread-local must own its data.
    let snapshot: EnvSnapshot = referenced_vars(text)
        .into_iter()
        .map(|name| {
            let value = env(&name);
            (name, value)
        })
        .collect();
    ENV_SNAPSHOT.with(|cell| *cell.borrow_mut() = Some(snapshot));
    let result = serde_norway::from_str::<T>(text);
    ENV_SNAPSHOT.with(|cell| *cell.borrow_mut() = None);
    result.map_err(|e| yaml_error(origin, text, &e))
}

/// Parse `text` resolving `${NAME}` from the process environment.
pub fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    parse_with_env(text, origin, &|name| std::env::var(name).ok())
}

/// Read and parse a configuration file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Every `${NAME}` in the text, so the lookup can be snapshotted before parsing.
fn referenced_vars(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                names.push(after[..end].to_string());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    names
}

/// The first tab in a line's indentation, as (line, column), both from 1. YAML forbids tabs
/// there, and the parser's own message ("found character that cannot start any token") does not
/// say so; editors that insert tabs make this the most common first mistake.
fn tab_in_indentation(text: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        line[..indent].find('\t').map(|col| (i + 1, col + 1))
    })
}

/// Turn serde_norway's `key: message at line L column C` into `origin:L: key: message`.
pub(crate) fn yaml_error(origin: &str, source: &str, err: &serde_norway::Error) -> ConfigError {
    let error_line = err.location().map(|l| l.line());
    // A tab at or before the line the parser gave up on is the likely cause.
    if let Some((line, column)) = tab_in_indentation(source)
        && error_line.is_none_or(|l| line <= l)
    {
        return ConfigError::Invalid {
            origin: origin.to_string(),
            line: Some(line),
            message: format!(
                "column {column} is a tab: YAML does not allow tabs for indentation; use spaces"
            ),
        };
    }
    let text = err.to_string();
    let message = match text.rfind(" at line ") {
        Some(i) if err.location().is_some() => text[..i].to_string(),
        _ => text,
    };
    let message = if message.starts_with("EOF while parsing") || message.is_empty() {
        "the file is empty; see packaging/examples/ for a starting point".to_string()
    } else {
        message
    };
    ConfigError::Invalid {
        origin: origin.to_string(),
        line: err.location().map(|l| l.line()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        name: EnvString,
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse_with_env::<Sample>("name: a\nnmae: b\n", "x.yaml", &|_| None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.yaml:2: "), "{msg}");
        assert!(msg.contains("unknown field `nmae`"), "{msg}");
    }

    #[test]
    fn missing_variable_is_named() {
        let err = parse_with_env::<Sample>("\nname: ${NOPE}\n", "x.yaml", &|_| None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.yaml:2: name: "), "{msg}");
        assert!(msg.contains("NOPE"), "{msg}");
    }

    #[test]
    fn a_tab_in_the_indentation_is_named_with_its_line_and_column() {
        let yaml = "relay: https://r.example\ningress:\n\t- upstream: http://localhost:8000\n";
        let err = parse_with_env::<agent::AgentConfig>(yaml, "agent.yaml", &|_| None).unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            "agent.yaml:3: column 1 is a tab: YAML does not allow tabs for indentation; use spaces"
        );
        let yaml = "relay: https://r.example\ningress:\n  - upstream: http://localhost:8000\n  \t host: x\n";
        let msg = parse_with_env::<agent::AgentConfig>(yaml, "a.yaml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("a.yaml:4: column 3 is a tab"), "{msg}");
        // A tab after the indentation (between key and value) is ordinary YAML.
        let ok = parse_with_env::<Sample>("name:\ta", "x.yaml", &|_| None).unwrap();
        assert_eq!(ok.name.as_str(), "a");
    }

    #[test]
    fn variables_are_replaced() {
        let s: Sample =
            parse_with_env("name: a-${X}-b", "x.yaml", &|n| (n == "X").then(|| "1".into())).unwrap();
        assert_eq!(s.name.as_str(), "a-1-b");
    }
}
