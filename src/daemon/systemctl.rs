//! `ponte service install|uninstall|status` on Linux, through systemctl.
//!
//! With the .deb, the units are already in /usr/lib/systemd/system and install only enables and
//! starts them. For a binary copied by hand, install writes the unit to /etc/systemd/system with
//! `ExecStart` pointing at this executable. A `--config` other than the default goes into a
//! drop-in. Everything install writes carries [`MARKER`], and uninstall removes only such files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::install::{Role, ServiceAction, ServiceSpec, write_example_if_missing};
use crate::config::ConfigError;
use crate::exit::CommandError;

/// Where the configuration files live (systemd `ConfigurationDirectory=ponte`).
pub const CONFIG_DIR: &str = "/etc/ponte";
/// Where administrators' units go.
const ADMIN_UNITS: &str = "/etc/systemd/system";
/// Where packages put units (`/lib/systemd/system` is the same folder on merged-/usr systems).
const PACKAGE_UNITS: [&str; 2] = ["/usr/lib/systemd/system", "/lib/systemd/system"];
/// The program path the shipped units name.
const PACKAGED_EXE: &str = "/usr/bin/ponte";
/// First line of every file `install` writes.
pub const MARKER: &str = "# Written by `ponte service install`; `ponte service uninstall` removes it.";
/// Drop-in holding a non-default `--config`.
const DROP_IN: &str = "50-ponte-install.conf";

/// The unit files as shipped in `systemd/`.
fn shipped_unit(file: &str) -> &'static str {
    match file {
        "ponte-agent@.service" => include_str!("../../systemd/ponte-agent@.service"),
        "ponte-relay.service" => include_str!("../../systemd/ponte-relay.service"),
        _ => include_str!("../../systemd/ponte-agent.service"),
    }
}

/// Run one service action.
pub fn run(action: ServiceAction, spec: &ServiceSpec) -> Result<(), CommandError> {
    if !Path::new("/run/systemd/system").exists() {
        return Err(anyhow::anyhow!(
            "systemd is not running on this machine, so there is no service to manage; run `ponte {}` under your own supervisor",
            spec.role.command()
        )
        .into());
    }
    match action {
        ServiceAction::Install => install(spec),
        ServiceAction::Uninstall => uninstall(spec),
        ServiceAction::Status => status(&spec.role),
    }
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .context("cannot run systemctl (is systemd installed?)")?;
    if !status.success() {
        bail!("`systemctl {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn permission_hint(e: std::io::Error, what: &Path) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow::anyhow!(
            "cannot write {}: permission denied; run it as root: sudo ponte service …",
            what.display()
        )
    } else {
        anyhow::anyhow!("cannot write {}: {e}", what.display())
    }
}

/// Variables from the unit's `EnvironmentFile=` (`/etc/ponte/<role>.env`), so `${NAME}` in the
/// configuration is checked the way the service will see it.
fn env_file_lookup(role: &Role) -> impl Fn(&str) -> Option<String> {
    let stem = role.config_file_name().trim_end_matches(".yaml").to_string();
    let text = std::fs::read_to_string(Path::new(CONFIG_DIR).join(format!("{stem}.env"))).unwrap_or_default();
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| !k.starts_with('#'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect();
    move |name| {
        std::env::var(name)
            .ok()
            .or_else(|| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }
}

fn packaged_unit_exists(file: &str) -> bool {
    PACKAGE_UNITS.iter().any(|dir| Path::new(dir).join(file).exists())
}

fn ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(MARKER))
}

fn write_ours(path: &Path, text: &str) -> anyhow::Result<()> {
    if path.exists() && !ours(path) {
        bail!(
            "{} exists and was not written by ponte; remove it or edit it by hand",
            path.display()
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| permission_hint(e, dir))?;
    }
    std::fs::write(path, text).map_err(|e| permission_hint(e, path))
}

/// The shipped unit with `ExecStart` pointing at `exe`, marked as ours.
pub fn unit_for_exe(shipped: &str, exe: &Path) -> String {
    let exe = exe.display().to_string();
    let body = shipped.replace(
        &format!("ExecStart={PACKAGED_EXE} "),
        &format!("ExecStart={exe} "),
    );
    format!("{MARKER}\n{body}")
}

/// A drop-in replacing `ExecStart` to read `config`.
pub fn config_drop_in(exe: &Path, role: &Role, config: &Path) -> String {
    format!(
        "{MARKER}\n[Service]\nExecStart=\nExecStart={} {} --config {}\n",
        exe.display(),
        role.command(),
        systemd_quote(&config.display().to_string())
    )
}

/// Quote a path for a unit file's command line when it needs it.
fn systemd_quote(s: &str) -> String {
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '%' || c == '$')
    {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
            .replace('$', "$$");
        format!("\"{escaped}\"")
    } else {
        s.to_string()
    }
}

/// The user the units run as (`User=ponte`).
const SERVICE_USER: &str = "ponte";

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The .deb creates the system user; for a hand-copied binary, create it here so configuration
/// files can be shared with the service through its group.
fn ensure_service_user() -> anyhow::Result<()> {
    if quiet(Command::new("getent").args(["passwd", SERVICE_USER])) {
        return Ok(());
    }
    let created = quiet(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--home-dir",
        "/var/lib/ponte",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "Ponte webhook tunnel",
        SERVICE_USER,
    ]));
    if !created {
        bail!(
            "cannot create the system user `{SERVICE_USER}` (useradd failed); run it as root: sudo ponte service install"
        );
    }
    println!("created the system user {SERVICE_USER}");
    Ok(())
}

/// The service runs as `ponte`, not root: say so if it will not be able to read the file.
fn warn_if_unreadable(config: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(config) else {
        return;
    };
    let group = Command::new("id")
        .args(["-g", SERVICE_USER])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok());
    let readable = meta.mode() & 0o004 != 0 || (meta.mode() & 0o040 != 0 && Some(meta.gid()) == group);
    if !readable {
        eprintln!(
            "warning: the service runs as user {SERVICE_USER} and cannot read {path}; run: sudo chgrp {SERVICE_USER} {path} && sudo chmod 640 {path}",
            path = config.display()
        );
    }
}

fn install(spec: &ServiceSpec) -> Result<(), CommandError> {
    let role = &spec.role;
    let unit = role.unit();
    let config = spec.config_path(Path::new(CONFIG_DIR))?;
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let exe = exe.canonicalize().unwrap_or(exe);

    ensure_service_user()?;
    let created = write_example_if_missing(role, &config).map_err(|e| permission_hint(e, &config))?;
    if created {
        // It will hold a token: root writes it, the service's group reads it.
        quiet(Command::new("chgrp").arg(SERVICE_USER).arg(&config));
    } else {
        warn_if_unreadable(&config);
        let text = std::fs::read_to_string(&config).map_err(|source| ConfigError::Unreadable {
            path: config.clone(),
            source,
        })?;
        role.check_edited(&text, &config.display().to_string())?;
        role.check_config(&text, &config.display().to_string(), &env_file_lookup(role))?;
    }

    // The unit definition: the package's, or our own copy for a hand-installed binary.
    let unit_file = role.unit_file();
    let packaged = packaged_unit_exists(unit_file) && exe == Path::new(PACKAGED_EXE);
    if !packaged {
        let path = Path::new(ADMIN_UNITS).join(unit_file);
        write_ours(&path, &unit_for_exe(shipped_unit(unit_file), &exe))?;
        println!("wrote {}", path.display());
    }
    let drop_in_dir = PathBuf::from(ADMIN_UNITS).join(format!("{unit}.d"));
    let default_config = Path::new(CONFIG_DIR).join(role.config_file_name());
    let drop_in = drop_in_dir.join(DROP_IN);
    if config != default_config {
        write_ours(&drop_in, &config_drop_in(&exe, role, &config))?;
        println!(
            "wrote {} (runs with --config {})",
            drop_in.display(),
            config.display()
        );
    } else if ours(&drop_in) {
        std::fs::remove_file(&drop_in).map_err(|e| permission_hint(e, &drop_in))?;
    }
    systemctl(&["daemon-reload"])?;

    if created {
        systemctl(&["enable", &unit])?;
        println!(
            "wrote the example configuration {path}\n\
             {unit} is enabled but not started: edit {path} (relay and token), then run\n  sudo systemctl start {unit}",
            path = config.display()
        );
        return Ok(());
    }
    // `start` returns once the service reported READY=1 (connected, or the start deadline passed).
    systemctl(&["enable", &unit])?;
    systemctl(&["restart", &unit])?;
    println!("{unit} is enabled and running with {}", config.display());
    status(role)
}

fn uninstall(spec: &ServiceSpec) -> Result<(), CommandError> {
    let role = &spec.role;
    let unit = role.unit();
    // Stopping a unit that does not exist is not an error worth stopping for.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", &unit])
        .status();
    let drop_in_dir = PathBuf::from(ADMIN_UNITS).join(format!("{unit}.d"));
    let drop_in = drop_in_dir.join(DROP_IN);
    if ours(&drop_in) {
        std::fs::remove_file(&drop_in).map_err(|e| permission_hint(e, &drop_in))?;
        let _ = std::fs::remove_dir(&drop_in_dir);
    }
    let unit_path = Path::new(ADMIN_UNITS).join(role.unit_file());
    // A template stays while other named agents still use it.
    let template_in_use = matches!(role, Role::Agent { name: Some(_) }) && other_instances_exist(&unit);
    if ours(&unit_path) && !template_in_use {
        std::fs::remove_file(&unit_path).map_err(|e| permission_hint(e, &unit_path))?;
        println!("removed {}", unit_path.display());
    }
    systemctl(&["daemon-reload"])?;
    let config = spec.config_path(Path::new(CONFIG_DIR))?;
    println!(
        "{unit} is stopped and disabled; the configuration {} was left in place",
        config.display()
    );
    Ok(())
}

fn other_instances_exist(unit: &str) -> bool {
    let Ok(out) = Command::new("systemctl")
        .args([
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "ponte-agent@*.service",
        ])
        .output()
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|u| u != unit)
}

fn status(role: &Role) -> Result<(), CommandError> {
    let unit = role.unit();
    let out = Command::new("systemctl")
        .args([
            "show",
            &unit,
            "--property=LoadState,UnitFileState,ActiveState,SubState,StatusText,MainPID,NRestarts",
        ])
        .output()
        .context("cannot run systemctl (is systemd installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("")
            .to_string()
    };
    if get("LoadState") == "not-found" {
        println!("{unit}: not installed (run `sudo ponte service install`)");
        return Ok(());
    }
    println!(
        "{unit}: {} ({}), {}",
        get("ActiveState"),
        get("SubState"),
        get("UnitFileState")
    );
    let status_text = get("StatusText");
    if !status_text.is_empty() {
        println!("status: {status_text}");
    }
    println!("pid: {}, restarts: {}", get("MainPID"), get("NRestarts"));
    println!("logs: journalctl -u {unit}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_points_at_this_program() {
        let unit = unit_for_exe(shipped_unit("ponte-agent.service"), Path::new("/opt/ponte/ponte"));
        assert!(unit.starts_with(MARKER));
        assert!(
            unit.contains("ExecStart=/opt/ponte/ponte agent --config /etc/ponte/agent.yaml"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/bin/ponte"));
    }

    #[test]
    fn drop_in_quotes_odd_paths() {
        let d = config_drop_in(
            Path::new("/usr/bin/ponte"),
            &Role::Agent { name: None },
            Path::new("/srv/my configs/a.yaml"),
        );
        assert!(
            d.contains("ExecStart=\nExecStart=/usr/bin/ponte agent --config \"/srv/my configs/a.yaml\"\n"),
            "{d}"
        );
    }
}
