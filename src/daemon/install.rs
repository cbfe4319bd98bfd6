//! What `ponte service install|uninstall|status` acts on, in terms both platforms share: which
//! program (agent, a named agent, or the relay), its service name, its configuration file and the
//! example written there when none exists yet. The OS-specific halves are `systemctl.rs` and
//! `windows.rs`.

use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::exit::CommandError;

/// The example agent configuration shipped in the packages.
pub const AGENT_EXAMPLE: &str = include_str!("../../packaging/examples/agent.yaml");
/// The example relay configuration shipped in the packages.
pub const RELAY_EXAMPLE: &str = include_str!("../../packaging/examples/relay.yaml");

/// Which of the three service commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    /// Register, enable and start.
    Install,
    /// Stop, disable and remove the registration (configuration files stay).
    Uninstall,
    /// Print the state.
    Status,
}

/// Which program runs as the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The agent; `name` selects one of several agents on the machine.
    Agent {
        /// Instance name (`ponte-agent@NAME`, `agent-NAME.yaml`).
        name: Option<String>,
    },
    /// The relay.
    Relay,
}

/// What the user asked to install, remove or inspect.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Agent, named agent, or relay.
    pub role: Role,
    /// `--config`: the file the service runs with, instead of the default.
    pub config: Option<PathBuf>,
}

impl ServiceSpec {
    /// Build from the command-line flags, checking the name.
    pub fn new(name: Option<String>, relay: bool, config: Option<PathBuf>) -> Result<Self, ConfigError> {
        let role = match (relay, name) {
            (true, Some(_)) => {
                return Err(ConfigError::invalid(
                    "command line",
                    "--name applies to agents only; drop it with --relay",
                ));
            }
            (true, None) => Role::Relay,
            (false, name) => {
                if let Some(n) = &name {
                    check_name(n).map_err(|m| ConfigError::invalid("command line", m))?;
                }
                Role::Agent { name }
            }
        };
        Ok(ServiceSpec { role, config })
    }

    /// The configuration file: `--config` made absolute, or the default under `config_dir`.
    pub fn config_path(&self, config_dir: &Path) -> Result<PathBuf, CommandError> {
        match &self.config {
            Some(p) => Ok(std::path::absolute(p).map_err(|e| {
                ConfigError::invalid("command line", format!("--config {}: {e}", p.display()))
            })?),
            None => Ok(config_dir.join(self.role.config_file_name())),
        }
    }
}

/// Instance names become a systemd instance and part of a Windows service name and a file
/// name, so they are kept to what is safe in all three.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--name `{name}`: use 1 to 40 lowercase letters, digits, `-` or `_` (it becomes part of the service and file names)"
        ))
    }
}

impl Role {
    /// The subcommand the service runs.
    pub fn command(&self) -> &'static str {
        match self {
            Role::Agent { .. } => "agent",
            Role::Relay => "relay",
        }
    }

    /// The systemd unit: `ponte-agent.service`, `ponte-agent@NAME.service`, `ponte-relay.service`.
    pub fn unit(&self) -> String {
        match self {
            Role::Agent { name: None } => "ponte-agent.service".into(),
            Role::Agent { name: Some(n) } => format!("ponte-agent@{n}.service"),
            Role::Relay => "ponte-relay.service".into(),
        }
    }

    /// The unit file that defines [`Role::unit`] (the template for a named agent).
    pub fn unit_file(&self) -> &'static str {
        match self {
            Role::Agent { name: None } => "ponte-agent.service",
            Role::Agent { name: Some(_) } => "ponte-agent@.service",
            Role::Relay => "ponte-relay.service",
        }
    }

    /// The Windows service name: `ponte-agent`, `ponte-agent-NAME`, `ponte-relay`.
    pub fn service_name(&self) -> String {
        match self {
            Role::Agent { name: None } => "ponte-agent".into(),
            Role::Agent { name: Some(n) } => format!("ponte-agent-{n}"),
            Role::Relay => "ponte-relay".into(),
        }
    }

    /// The name shown in the Services app.
    pub fn display_name(&self) -> String {
        match self {
            Role::Agent { name: None } => "Ponte agent".into(),
            Role::Agent { name: Some(n) } => format!("Ponte agent ({n})"),
            Role::Relay => "Ponte relay".into(),
        }
    }

    /// The default configuration file name: `agent.yaml`, `agent-NAME.yaml`, `relay.yaml`.
    pub fn config_file_name(&self) -> String {
        match self {
            Role::Agent { name: None } => "agent.yaml".into(),
            Role::Agent { name: Some(n) } => format!("agent-{n}.yaml"),
            Role::Relay => "relay.yaml".into(),
        }
    }

    /// The example written when the configuration file does not exist yet.
    pub fn example(&self) -> &'static str {
        match self {
            Role::Agent { .. } => AGENT_EXAMPLE,
            Role::Relay => RELAY_EXAMPLE,
        }
    }

    /// Parse and validate a configuration text the way the service will, with `env` for `${NAME}`.
    pub fn check_config(
        &self,
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        match self {
            Role::Agent { .. } => {
                let cfg: crate::config::agent::AgentConfig =
                    crate::config::parse_with_env(text, origin, env)?;
                cfg.merge(Default::default(), origin)?;
            }
            Role::Relay => {
                crate::config::relay::RelayConfig::from_str_with_env(text, origin, env)?;
            }
        }
        Ok(())
    }
}

impl Role {
    /// Refuse to start a service on the example as shipped: it names relay.example.com and a
    /// placeholder token, so it could only retry forever.
    pub fn check_edited(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        if text.trim() == self.example().trim() {
            return Err(ConfigError::invalid(
                origin,
                match self {
                    Role::Agent { .. } => {
                        "this is still the example: set `relay:` and `token:` to what your provider gave you, then run this again"
                    }
                    Role::Relay => {
                        "this is still the example: set `domain:`, `tls:` and `tunnels:`, then run this again"
                    }
                },
            ));
        }
        Ok(())
    }
}

/// Write the example configuration to `path` if nothing is there yet; true if it was written.
/// An existing file is never touched: it is the user's.
pub fn write_example_if_missing(role: &Role, path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // It will hold a token: readable by root (and the service's group, set by the caller).
        options.mode(0o640);
    }
    use std::io::Write;
    let mut file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    file.write_all(role.example().as_bytes())?;
    Ok(true)
}

/// The program's file name in a service's command line (`"C:\dir\ponte.exe" agent …`, or
/// unquoted with spaces as Wine writes it), lower-cased.
pub fn image_file_name(command_line: &str) -> String {
    let line = command_line.trim();
    let program = match line.strip_prefix('"') {
        Some(rest) => rest.split('"').next().unwrap_or(rest),
        None => {
            let lower = line.to_lowercase();
            match lower.find(".exe") {
                Some(i) => &line[..i + 4],
                None => line.split(' ').next().unwrap_or(line),
            }
        }
    };
    program
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(program)
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_per_role() {
        let table = [
            (
                Role::Agent { name: None },
                "ponte-agent.service",
                "ponte-agent",
                "agent.yaml",
            ),
            (
                Role::Agent {
                    name: Some("loja-2".into()),
                },
                "ponte-agent@loja-2.service",
                "ponte-agent-loja-2",
                "agent-loja-2.yaml",
            ),
            (Role::Relay, "ponte-relay.service", "ponte-relay", "relay.yaml"),
        ];
        for (role, unit, service, file) in table {
            assert_eq!(role.unit(), unit);
            assert_eq!(role.service_name(), service);
            assert_eq!(role.config_file_name(), file);
        }
    }

    #[test]
    fn flags_are_checked() {
        assert!(ServiceSpec::new(Some("Bad Name".into()), false, None).is_err());
        assert!(ServiceSpec::new(Some("../x".into()), false, None).is_err());
        assert!(ServiceSpec::new(Some("x".into()), true, None).is_err());
        let spec = ServiceSpec::new(None, true, None).unwrap();
        assert_eq!(spec.role, Role::Relay);
        assert_eq!(
            spec.config_path(Path::new("/etc/ponte")).unwrap(),
            PathBuf::from("/etc/ponte/relay.yaml")
        );
    }

    #[test]
    fn examples_are_valid_configurations() {
        let relay = Role::Relay;
        relay
            .check_config(relay.example(), "example", &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        // The agent example is refused only for its placeholders.
        let agent = Role::Agent { name: None };
        let e = agent
            .check_config(agent.example(), "example", &|_| None)
            .unwrap_err();
        assert!(e.to_string().contains("still the example"), "{e}");
        let edited = AGENT_EXAMPLE
            .replace("PASTE-YOUR-TOKEN-HERE", "abc")
            .replace("relay.example.com", "relay.clinic.example");
        agent
            .check_config(&edited, "example", &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn program_name_in_a_service_command_line() {
        let table = [
            (
                r#""C:\Program Files\Ponte\ponte.exe" agent --config "C:\ProgramData\Ponte\agent.yaml""#,
                "ponte.exe",
            ),
            (
                r#"C:\Program Files\Ponte\Ponte.EXE agent --config "C:\x y\agent.yaml""#,
                "ponte.exe",
            ),
            (r"C:\windows\system32\svchost.exe -k netsvcs", "svchost.exe"),
            (r"C:\tools\ponte", "ponte"),
        ];
        for (line, name) in table {
            assert_eq!(image_file_name(line), name, "{line}");
        }
    }

    #[test]
    fn the_unedited_example_is_refused() {
        let role = Role::Agent { name: None };
        let e = role
            .check_edited(AGENT_EXAMPLE, "/etc/ponte/agent.yaml")
            .unwrap_err();
        assert!(e.to_string().contains("still the example"), "{e}");
        let edited = AGENT_EXAMPLE.replace("PASTE-YOUR-TOKEN-HERE", "abc");
        assert!(role.check_edited(&edited, "x").is_ok());
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.yaml");
        let role = Role::Agent { name: None };
        assert!(write_example_if_missing(&role, &path).unwrap());
        std::fs::write(&path, "mine").unwrap();
        assert!(!write_example_if_missing(&role, &path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    }
}
