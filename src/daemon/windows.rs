//! Windows Service Control Manager glue: run `agent`/`relay` as a service when the SCM started
//! the process, and `ponte service install|uninstall|status`.
//!
//! Detection: every `agent`/`relay` run first offers itself to the service dispatcher. The SCM
//! accepts only a process it started; anywhere else the dispatcher fails at once with
//! ERROR_FAILED_SERVICE_CONTROLLER_CONNECT and the command runs in the console as usual.
//! As a service: logs go to `%ProgramData%\Ponte\logs\<service>.log` (rotated), a missing
//! configuration is created from the example, restart-on-failure actions are (re)applied, and
//! Stop / Shutdown cancel the same shutdown token SIGTERM cancels on Linux.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo,
    ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_dispatcher;
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::install::{self, Role, ServiceSpec, write_example_if_missing};
use crate::exit::{CommandError, EXIT_CONFIG};

/// The dispatcher's answer when the process was not started by the SCM.
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
/// The SCM's answer when a service of that name does not exist.
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
/// Waits before the SCM restarts a failed service: first, second, and every later failure.
pub const RESTART_DELAYS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(60),
];
/// A day without failures resets the count, so a rare failure gets the quick restart again.
pub const FAILURE_RESET: Duration = Duration::from_secs(24 * 3600);
/// Longest wait for a service to stop during `uninstall`.
const STOP_WAIT: Duration = Duration::from_secs(60);

type Body = Box<dyn FnOnce() -> Result<(), CommandError> + Send>;

struct Pending {
    role: Role,
    config: Option<PathBuf>,
    body: Body,
}

/// Who runs the command: the first of the SCM (via `service_main`) and the console fallback to
/// claim it. The condition variable wakes the main thread on either event.
enum Claim {
    Waiting(Pending),
    Service,
    Console,
}

struct Detection {
    claim: Claim,
    /// Set when the dispatcher returned (at once when refused; after the service stopped).
    dispatcher_done: bool,
    outcome: Option<Result<(), CommandError>>,
}

static DETECTION: Mutex<Option<Detection>> = Mutex::new(None);
static WAKE: Condvar = Condvar::new();
/// How long the dispatcher may neither accept nor refuse. Windows answers a console process at
/// once (ERROR_FAILED_SERVICE_CONTROLLER_CONNECT); Wine's dispatcher can block forever instead.
const DISPATCHER_WAIT: Duration = Duration::from_secs(3);
/// Cancelled by the SCM's Stop or Shutdown; linked to each command's shutdown token.
static STOP: OnceLock<CancellationToken> = OnceLock::new();

/// `%ProgramData%\Ponte`: configuration, logs. Never a user profile, so the service (LocalSystem)
/// and the administrator editing the file see the same folder.
pub fn data_dir() -> PathBuf {
    let base = std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"));
    base.join("Ponte")
}

/// The log file of service `name`: in `logs\` beside its configuration file, which is
/// `%ProgramData%\Ponte\logs` for the default configuration. Derived from the configuration path
/// rather than the environment, so the MSI's service (whose path the installer wrote) and the
/// administrator agree on the folder even where the service's environment differs (wine).
pub fn log_path(name: &str, config: Option<&std::path::Path>) -> PathBuf {
    let dir = config
        .and_then(|c| c.parent())
        .map(PathBuf::from)
        .unwrap_or_else(data_dir);
    dir.join("logs").join(format!("{name}.log"))
}

/// An SCM error with the OS's reason (the crate's own message is only "IO error in winapi call").
fn describe(e: &windows_service::Error) -> String {
    match e {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    }
}

fn detection() -> MutexGuard<'static, Option<Detection>> {
    DETECTION.lock().unwrap_or_else(|p| p.into_inner())
}

/// See [`super::run`].
pub fn run<F>(role: Role, config: Option<PathBuf>, body: F) -> Result<(), CommandError>
where
    F: FnOnce() -> Result<(), CommandError> + Send + 'static,
{
    *detection() = Some(Detection {
        claim: Claim::Waiting(Pending {
            role,
            config,
            body: Box::new(body),
        }),
        dispatcher_done: false,
        outcome: None,
    });
    // The dispatcher blocks its thread for the service's whole life, so it gets its own; the name
    // is not checked for a service that has its own process.
    std::thread::spawn(|| {
        let result = service_dispatcher::start("ponte", ffi_service_main);
        if let Err(e) = &result {
            let refused = matches!(e, windows_service::Error::Winapi(io)
                if io.raw_os_error() == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT));
            if !refused {
                tracing::debug!(error = %describe(e), "service dispatcher failed; running as a console program");
            }
        }
        if let Some(d) = detection().as_mut() {
            d.dispatcher_done = true;
        }
        WAKE.notify_all();
    });

    let started = Instant::now();
    let mut guard = detection();
    loop {
        let Some(d) = guard.as_mut() else {
            return Ok(());
        };
        match d.claim {
            // The service ran; the dispatcher returns once it has stopped.
            Claim::Service if d.dispatcher_done => return d.outcome.take().unwrap_or(Ok(())),
            Claim::Service => {}
            Claim::Waiting(_) if d.dispatcher_done || started.elapsed() >= DISPATCHER_WAIT => {
                let Claim::Waiting(pending) = std::mem::replace(&mut d.claim, Claim::Console) else {
                    unreachable!("matched Waiting above");
                };
                drop(guard);
                return (pending.body)();
            }
            Claim::Waiting(_) | Claim::Console => {}
        }
        guard = WAKE
            .wait_timeout(guard, Duration::from_millis(100))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

windows_service::define_windows_service!(ffi_service_main, service_main);

/// Cancel `shutdown` when the SCM asks the service to stop (no-op in a console run).
pub fn link_stop(shutdown: &CancellationToken) {
    if let Some(stop) = STOP.get() {
        let stop = stop.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            shutdown.cancel();
        });
    }
}

fn service_main(arguments: Vec<OsString>) {
    // The SCM passes the service's registered name first.
    let Some(name) = arguments.first().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    // Wine's dispatcher can hand a console process the control pipe of another service;
    // Windows never does. Take the SCM's word only if its record says this process is `name`.
    if !scm_runs_us_as(&name) {
        return;
    }
    let pending = {
        let mut guard = detection();
        let Some(d) = guard.as_mut() else {
            return;
        };
        match std::mem::replace(&mut d.claim, Claim::Service) {
            Claim::Waiting(pending) => pending,
            other => {
                // Already running as a console program.
                d.claim = other;
                return;
            }
        }
    };
    WAKE.notify_all();
    let stop = STOP.get_or_init(CancellationToken::new).clone();
    let handler_stop = stop.clone();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            handler_stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = match service_control_handler::register(&name, handler) {
        Ok(status) => status,
        Err(e) => {
            if let Some(d) = detection().as_mut() {
                d.outcome = Some(Err(anyhow!(
                    "cannot register with the service manager: {}",
                    describe(&e)
                )
                .into()));
            }
            return;
        }
    };
    let report = |state, exit_code| {
        let _ = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code,
            checkpoint: 0,
            wait_hint: Duration::from_secs(if state == ServiceState::Running { 0 } else { 40 }),
            process_id: None,
        });
    };
    report(ServiceState::StartPending, ServiceExitCode::Win32(0));

    let log = log_path(&name, pending.config.as_deref());
    // If the log file cannot be opened there is nowhere to say so; run anyway: a tunnel without
    // logs beats no tunnel.
    let _ = super::logfile::route_to_file(&log);
    tracing::info!(service = %name, version = crate::VERSION, "started by the Windows service manager");
    if let Some(config) = &pending.config {
        match write_example_if_missing(&pending.role, config) {
            Ok(true) => tracing::warn!(
                config = %config.display(),
                "no configuration found; wrote the example there: edit relay and token, then restart the service"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(config = %config.display(), error = %e, "cannot write the example configuration")
            }
        }
    }
    if let Err(e) = configure_recovery(&name) {
        tracing::warn!(error = %e, "cannot set the service's recovery options");
    }

    // Windows services report Running once initialised; the agent keeps (re)connecting.
    report(ServiceState::Running, ServiceExitCode::Win32(0));
    let outcome = (pending.body)();
    let exit = match &outcome {
        Ok(()) => ServiceExitCode::Win32(0),
        Err(e) => {
            tracing::error!("{e}");
            ServiceExitCode::ServiceSpecific(match e {
                CommandError::Config(_) => u32::from(EXIT_CONFIG),
                _ => 1,
            })
        }
    };
    tracing::info!(service = %name, "service stopped");
    if let Some(d) = detection().as_mut() {
        d.outcome = Some(outcome);
    }
    report(ServiceState::Stopped, exit);
}

/// True if the SCM's record says service `name` is this program. (Its record of the process
/// id would be the better witness, but the crate reports it only once the service is Running.)
fn scm_runs_us_as(name: &str) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    let Some(ours) = exe.file_name().map(|n| n.to_string_lossy().to_lowercase()) else {
        return false;
    };
    ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .and_then(|m| m.open_service(name, ServiceAccess::QUERY_CONFIG))
        .and_then(|s| s.query_config())
        .is_ok_and(|config| install::image_file_name(&config.executable_path.to_string_lossy()) == ours)
}

/// Restart after a crash and after an exit with an error, waiting [`RESTART_DELAYS`], and start
/// delayed at boot (after the network stack); set from the program because the MSI tool (wixl)
/// has no element for either. Each setting is tried even if another fails.
fn configure_recovery(name: &str) -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| anyhow!("cannot open the service manager: {}", describe(&e)))?;
    let service = manager
        .open_service(name, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
        .map_err(|e| anyhow!("cannot open service {name}: {}", describe(&e)))?;
    let mut failed = Vec::new();
    let actions = service.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(FAILURE_RESET),
        reboot_msg: None,
        command: None,
        actions: Some(
            RESTART_DELAYS
                .iter()
                .map(|delay| ServiceAction {
                    action_type: ServiceActionType::Restart,
                    delay: *delay,
                })
                .collect(),
        ),
    });
    if let Err(e) = actions {
        failed.push(format!("restart-on-failure actions: {}", describe(&e)));
    }
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        failed.push(format!("restart after an exit with an error: {}", describe(&e)));
    }
    if let Err(e) = service.set_delayed_auto_start(true) {
        failed.push(format!("delayed automatic start: {}", describe(&e)));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", failed.join("; ")))
    }
}

/// `ponte service install|uninstall|status`.
pub fn service_command(action: install::ServiceAction, spec: &ServiceSpec) -> Result<(), CommandError> {
    match action {
        install::ServiceAction::Install => install(spec),
        install::ServiceAction::Uninstall => uninstall(&spec.role),
        install::ServiceAction::Status => status(spec),
    }
}

fn scm_error(e: windows_service::Error, what: &str) -> anyhow::Error {
    match &e {
        windows_service::Error::Winapi(io) if io.kind() == std::io::ErrorKind::PermissionDenied => anyhow!(
            "{what}: access denied; run it from an administrator command prompt (Win, type cmd, \"Run as administrator\")"
        ),
        _ => anyhow!("{what}: {}", describe(&e)),
    }
}

fn install(spec: &ServiceSpec) -> Result<(), CommandError> {
    let role = &spec.role;
    let name = role.service_name();
    let config = spec.config_path(&data_dir())?;
    let created = write_example_if_missing(role, &config)
        .with_context(|| format!("cannot write {}", config.display()))?;
    if !created {
        let text =
            std::fs::read_to_string(&config).map_err(|source| crate::config::ConfigError::Unreadable {
                path: config.clone(),
                source,
            })?;
        role.check_edited(&text, &config.display().to_string())?;
        role.check_config(&text, &config.display().to_string(), &|n| std::env::var(n).ok())?;
    }
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let info = ServiceInfo {
        name: name.clone().into(),
        display_name: role.display_name().into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.clone(),
        launch_arguments: vec![
            role.command().into(),
            "--config".into(),
            config.clone().into_os_string(),
        ],
        dependencies: vec![],
        account_name: None, // LocalSystem
        account_password: None,
    };
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| scm_error(e, "cannot open the service manager"))?;
    let access = ServiceAccess::QUERY_STATUS
        | ServiceAccess::START
        | ServiceAccess::STOP
        | ServiceAccess::CHANGE_CONFIG;
    let service = match manager.open_service(&name, access) {
        Ok(existing) => {
            existing
                .change_config(&info)
                .map_err(|e| scm_error(e, "cannot update the service"))?;
            println!("updated service {name}");
            existing
        }
        Err(_) => {
            let created = manager
                .create_service(&info, access)
                .map_err(|e| scm_error(e, "cannot create the service"))?;
            println!("registered service {name} ({})", role.display_name());
            created
        }
    };
    let _ = service
        .set_description("Ponte: receives webhooks through the relay and hands them to a local program.");
    if let Err(e) = configure_recovery(&name) {
        // Registered and startable; only the recovery options are missing. Say so, go on.
        eprintln!(
            "warning: could not set every recovery option ({e}); the service works, but set them by hand in the Services app (Recovery tab) if needed"
        );
    }
    if created {
        println!(
            "wrote the example configuration {}\nedit relay and token there, then start the service: sc start {name}",
            config.display()
        );
        return Ok(());
    }
    let running = service
        .query_status()
        .map(|s| s.current_state != ServiceState::Stopped)
        .unwrap_or(false);
    if !running {
        service
            .start::<&str>(&[])
            .map_err(|e| scm_error(e, "cannot start the service"))?;
    }
    println!("{name} starts automatically (delayed) and restarts after a failure");
    println!(
        "configuration: {}\nlogs: {}",
        config.display(),
        log_path(&name, Some(&config)).display()
    );
    Ok(())
}

fn uninstall(role: &Role) -> Result<(), CommandError> {
    let name = role.service_name();
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| scm_error(e, "cannot open the service manager"))?;
    let service = match manager.open_service(
        &name,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
    ) {
        Ok(s) => s,
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
            println!("{name} is not installed");
            return Ok(());
        }
        Err(e) => return Err(scm_error(e, "cannot open the service").into()),
    };
    if service
        .query_status()
        .is_ok_and(|s| s.current_state != ServiceState::Stopped)
    {
        let _ = service.stop();
        let started = Instant::now();
        while service
            .query_status()
            .is_ok_and(|s| s.current_state != ServiceState::Stopped)
        {
            if started.elapsed() > STOP_WAIT {
                return Err(
                    anyhow!("{name} did not stop within {} s; try again", STOP_WAIT.as_secs()).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    service
        .delete()
        .map_err(|e| scm_error(e, "cannot remove the service"))?;
    println!(
        "{name} is stopped and removed; configuration and logs stay in {}",
        data_dir().display()
    );
    Ok(())
}

fn status(spec: &ServiceSpec) -> Result<(), CommandError> {
    let name = spec.role.service_name();
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| scm_error(e, "cannot open the service manager"))?;
    match manager.open_service(&name, ServiceAccess::QUERY_STATUS) {
        Ok(service) => {
            let s = service
                .query_status()
                .map_err(|e| scm_error(e, "cannot query the service"))?;
            println!("{name}: {:?}", s.current_state);
            if let Some(pid) = s.process_id {
                println!("pid: {pid}");
            }
        }
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
            println!("{name}: not installed (run `ponte service install` as administrator)");
            return Ok(());
        }
        Err(e) => return Err(scm_error(e, "cannot open the service").into()),
    }
    let config = spec.config_path(&data_dir())?;
    println!("logs: {}", log_path(&name, Some(&config)).display());
    Ok(())
}
