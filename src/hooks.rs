//! Command hooks: adnanh/webhook's hooks file served by Ponte, either alone (`ponte webhook`, a
//! drop-in for `webhook.exe`) or as an origin of the agent (`hooks:` in an ingress rule). A
//! request to `/<prefix>/<id>` is matched to a hook, its trigger rules are checked, and its
//! command runs without a shell, with a timeout, a concurrency limit and bounded output.
//!
//! Nothing here depends on the agent: [`handler::HookService`] takes an `http::Request` with a
//! streaming body and the sender's address, and returns a response.

pub mod cli;
pub mod definition;
pub mod exec;
pub mod handler;
pub mod request;
pub mod rules;
pub mod server;
pub mod template;
pub mod value;

use std::path::Path;

use crate::config::ConfigError;
pub use definition::Hook;

/// Every hook of one or more files, ids unique across them.
#[derive(Debug, Clone, Default)]
pub struct HookSet {
    hooks: Vec<Hook>,
}

impl HookSet {
    /// The hook with this id.
    pub fn find(&self, id: &str) -> Option<&Hook> {
        self.hooks.iter().find(|h| h.id == id)
    }

    /// How many hooks there are.
    pub fn len(&self) -> usize {
        self.hooks.len()
    }

    /// True when no hook is loaded.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// The hooks, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Hook> {
        self.hooks.iter()
    }
}

/// Parse one file's text (named `origin` in errors).
pub fn parse_text(text: &str, origin: &str, template: bool) -> Result<(Vec<Hook>, Vec<String>), ConfigError> {
    let rendered;
    let text = if template {
        rendered = template::render(text).map_err(|e| {
            ConfigError::invalid(
                origin,
                format!("template: {e} (the file is read as a Go template because of -template)"),
            )
        })?;
        rendered.as_str()
    } else {
        text
    };
    definition::parse(text, origin)
}

/// Read one file.
pub fn load_file(path: &Path, template: bool) -> Result<(Vec<Hook>, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    parse_text(&text, &path.display().to_string(), template)
}
