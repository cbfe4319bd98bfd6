//! The `ponte` command line. Parsing only; every command is carried out in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ponte::commands::{self, AgentArgs};
use ponte::logging::{LogFormat, Output};

/// Ponte: receive webhooks on a machine with no public IP.
#[derive(Parser)]
#[command(name = "ponte", version, about, propagate_version = true)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) [default: info; for `webhook`: from -verbose/-debug];
    /// RUST_LOG overrides it.
    #[arg(long, global = true, env = "PONTE_LOG")]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Runtime worker threads (0: the command's default — 1 for the agent, one per core for the relay).
    #[arg(long, global = true, default_value_t = 0, env = "PONTE_WORKER_THREADS")]
    worker_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the public relay.
    Relay {
        /// The relay's configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Listen address (overrides `listen:`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the agent: dial the relay and serve requests from a local upstream.
    Agent {
        #[command(flatten)]
        flags: AgentFlags,
        #[command(flatten)]
        inspect: InspectFlag,
    },
    /// The inlets 3 command line (`client --url wss://… --upstream=… --token=…`), run as `agent`.
    Client(ClientFlags),
    /// Test the credentials: connect, authenticate, print what the relay said (exit 0 ok, 2 bad
    /// configuration, 3 token refused, 4 relay unreachable or untrusted, 5 an upstream is down).
    Check(AgentFlags),
    /// Inspect and operate a relay's durable queue: list, show, replay, purge deliveries.
    Deliveries(DeliveriesFlags),
    /// Show a relay's tunnels: agents online (address, version, since), last seen, queue depth.
    Status(StatusFlags),
    /// Start a relay, an agent and an echo upstream on loopback, and show a working curl line.
    Demo {
        /// Use this upstream instead of the built-in echo server.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Measure the tunnel beside a direct connection, rathole and bore (relay and agent as processes).
    Bench {
        /// Length of each throughput phase.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Connections for the requests/s phase.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Idle agent connections opened to measure relay memory per agent.
        #[arg(long, default_value_t = 500)]
        idle_agents: usize,
        /// Where `rathole` and `bore` are (default: found on PATH; bench/install-peers.sh installs them).
        #[arg(long, value_name = "DIR")]
        peers: Option<PathBuf>,
        /// Skip the command-hooks comparison.
        #[arg(long)]
        no_hooks: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve an adnanh/webhook hooks file locally (a drop-in for webhook.exe; its flags as Go writes them).
    #[command(disable_version_flag = true)]
    Webhook(Box<ponte::hooks::cli::WebhookFlags>),
    /// Run the agent (or relay) as a system service: a systemd unit or a Windows service.
    #[command(subcommand)]
    Service(ServiceCommand),
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Register, enable and start the service (writes the example configuration if there is none).
    Install(ServiceFlags),
    /// Stop and remove the service; configuration files stay.
    Uninstall(ServiceFlags),
    /// Show whether the service runs and what it is doing.
    Status(ServiceFlags),
}

#[derive(Args)]
struct ServiceFlags {
    /// Configuration file [default: /etc/ponte/agent.yaml; on Windows %ProgramData%\Ponte\agent.yaml].
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// One more agent on this machine: ponte-agent@NAME, configured in agent-NAME.yaml.
    #[arg(long)]
    name: Option<String>,
    /// The relay instead of the agent.
    #[arg(long, conflicts_with = "name")]
    relay: bool,
}

#[derive(Args)]
struct AgentFlags {
    /// The agent's configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Relay URL, e.g. https://relay.example.com; repeat it for each node of a relay cluster.
    #[arg(long)]
    relay: Vec<String>,
    /// The tunnel's token (visible in `ps`: prefer --token-from or PONTE_TOKEN).
    #[arg(long, env = "PONTE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from the first line of this file (wins over --token and PONTE_TOKEN).
    #[arg(long)]
    token_from: Option<PathBuf>,
    /// Local upstream for every request, e.g. http://localhost:8000 (replaces `ingress:`).
    #[arg(long)]
    upstream: Option<String>,
    /// Extra CA certificate (PEM) to trust for the relay.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// An adnanh/webhook hooks file served at /hooks/<id>, in front of the other rules.
    #[arg(long)]
    hooks: Option<PathBuf>,
}

#[derive(Args)]
struct InspectFlag {
    /// The inspector's address (default 127.0.0.1:4040; the next ports if it is taken), or off.
    #[arg(long, value_name = "ADDR|off")]
    inspect: Option<String>,
}

#[derive(Args)]
struct ClientFlags {
    /// Relay URL: wss://ADDR (TLS) or ws://ADDR (plain, loopback only).
    #[arg(long)]
    url: String,
    /// Upstream: http://localhost:8000, or host=url pairs separated by commas.
    #[arg(long)]
    upstream: String,
    /// The token.
    #[arg(long, env = "PONTE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file.
    #[arg(long)]
    token_from: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for the relay.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[command(flatten)]
    inspect: InspectFlag,
}

#[derive(Args)]
struct DeliveriesFlags {
    /// The relay's base URL, e.g. https://relay.example.com.
    #[arg(long, global = true, env = "PONTE_RELAY")]
    relay: Option<String>,
    /// The relay's `admin_token`.
    #[arg(long, global = true, env = "PONTE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Extra CA certificate (PEM) to trust for the relay.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Print the relay's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: DeliveriesCommand,
}

#[derive(Args)]
struct StatusFlags {
    /// The relay's base URL, e.g. https://relay.example.com.
    #[arg(long, env = "PONTE_RELAY")]
    relay: Option<String>,
    /// The relay's `admin_token`.
    #[arg(long, env = "PONTE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Extra CA certificate (PEM) to trust for the relay.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Print the relay's JSON answer instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        /// Only this tunnel.
        #[arg(long)]
        tunnel: Option<String>,
        /// Only this state.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only deliveries older than this position (printed at the end of a full page).
        #[arg(long)]
        before: Option<i64>,
    },
    /// Show one delivery: the request and every attempt.
    Show {
        /// The delivery id (the `Ponte-Delivery-Id` the sender got).
        id: String,
    },
    /// Send a delivery again now (one by id, or every failed one).
    Replay {
        /// The delivery id.
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        id: Option<String>,
        /// Replay every failed delivery.
        #[arg(long)]
        failed: bool,
        /// With --failed: only this tunnel's.
        #[arg(long, requires = "failed")]
        tunnel: Option<String>,
    },
    /// Delete deliveries in one state (pending ones are never delivered afterwards).
    Purge {
        /// Which state to delete.
        #[arg(long, value_enum)]
        status: StatusArg,
        /// Only this tunnel.
        #[arg(long)]
        tunnel: Option<String>,
        /// Only those that finished (pending: arrived) at least this long ago, e.g. 7d.
        #[arg(long)]
        older_than: Option<String>,
    },
}

/// A delivery state as typed on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
enum StatusArg {
    Pending,
    Delivered,
    Failed,
}

impl From<StatusArg> for ponte::protocol::admin::Status {
    fn from(s: StatusArg) -> Self {
        use ponte::protocol::admin::Status;
        match s {
            StatusArg::Pending => Status::Pending,
            StatusArg::Delivered => Status::Delivered,
            StatusArg::Failed => Status::Failed,
        }
    }
}

fn deliveries(flags: DeliveriesFlags) -> Result<(), commands::CommandError> {
    use commands::deliveries::{Action, AdminArgs};
    let action = match flags.command {
        DeliveriesCommand::List {
            tunnel,
            status,
            limit,
            before,
        } => Action::List {
            tunnel,
            status: status.map(Into::into),
            limit,
            before,
        },
        DeliveriesCommand::Show { id } => Action::Show { id },
        DeliveriesCommand::Replay {
            failed: true, tunnel, ..
        } => Action::ReplayFailed { tunnel },
        DeliveriesCommand::Replay { id, .. } => Action::Replay {
            id: id.unwrap_or_default(),
        },
        DeliveriesCommand::Purge {
            status,
            tunnel,
            older_than,
        } => Action::Purge {
            status: status.into(),
            tunnel,
            older_than,
        },
    };
    let args = AdminArgs {
        relay: flags.relay,
        admin_token: flags.admin_token,
        ca_file: flags.ca_file,
        json: flags.json,
    };
    commands::deliveries::run(args, action)
}

impl From<AgentFlags> for AgentArgs {
    fn from(f: AgentFlags) -> Self {
        AgentArgs {
            config: f.config,
            relay: f.relay,
            token: f.token,
            token_from: f.token_from,
            upstream: f.upstream,
            ca_file: f.ca_file,
            hooks: f.hooks,
            inspect: None,
        }
    }
}

fn service(command: ServiceCommand) -> Result<(), commands::CommandError> {
    use ponte::daemon::{ServiceAction, ServiceSpec};
    let (action, f) = match command {
        ServiceCommand::Install(f) => (ServiceAction::Install, f),
        ServiceCommand::Uninstall(f) => (ServiceAction::Uninstall, f),
        ServiceCommand::Status(f) => (ServiceAction::Status, f),
    };
    let spec = ServiceSpec::new(f.name, f.relay, f.config)?;
    ponte::daemon::service_command(action, spec)
}

/// glibc's malloc returns freed memory to the kernel eagerly: a chunk over its mmap threshold (128
/// KiB at first) is unmapped when freed, and a free top of a heap over 128 KiB is trimmed. Every
/// 256 KiB HTTP/2 frame buffer on the tunnel then comes back as fresh zeroed pages: a 1 MiB response
/// cost the relay 115-150 page faults, and 13-25 % more CPU time than without them (README,
/// Performance). Keeping up to 8 MiB per heap and mapping only chunks of 1 MiB or more brings that
/// to under one fault.
/// An operator's own `GLIBC_TUNABLES` for malloc wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_buffers() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        return;
    }
    // SAFETY: mallopt only changes two thresholds of the allocator; it is called before any other
    // thread exists, and a rejected value (0 returned) leaves glibc's defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}

fn main() -> ExitCode {
    keep_freed_buffers();
    let cli = Cli::parse_from(ponte::hooks::cli::normalize_go_flags(
        std::env::args_os().collect(),
    ));
    let log = ponte::logging::Setup {
        format: cli.log_format,
        level: cli.log_level.clone().unwrap_or_else(|| match &cli.command {
            Command::Webhook(f) => f.log_level().to_string(),
            _ => "info".to_string(),
        }),
        output: match &cli.command {
            // A line per request: written in batches.
            Command::Relay { .. } => Output::Batched,
            Command::Webhook(f) => f.logfile.clone().map_or(Output::Standard, Output::File),
            _ => Output::Standard,
        },
    };
    let _log_guard = match ponte::logging::setup(log, ponte::daemon::log_writer()) {
        Ok(guard) => guard,
        Err(e) => return commands::exit(Err(e.into())),
    };
    commands::set_worker_threads(cli.worker_threads);
    let result = match cli.command {
        Command::Relay { config, listen } => commands::relay(&config, listen.as_deref()),
        Command::Agent { flags, inspect } => commands::agent(AgentArgs {
            inspect: inspect.inspect,
            ..flags.into()
        }),
        Command::Client(f) => commands::client(commands::ClientArgs {
            url: f.url,
            upstream: f.upstream,
            token: f.token,
            token_from: f.token_from,
            ca_file: f.ca_file,
            inspect: f.inspect.inspect,
        }),
        Command::Check(flags) => commands::check(flags.into()),
        Command::Deliveries(flags) => deliveries(flags),
        Command::Status(f) => commands::status::run(commands::deliveries::AdminArgs {
            relay: f.relay,
            admin_token: f.admin_token,
            ca_file: f.ca_file,
            json: f.json,
        }),
        Command::Demo { upstream } => commands::demo(upstream),
        Command::Bench {
            duration,
            connections,
            idle_agents,
            peers,
            no_hooks,
            json,
        } => commands::bench(ponte::bench::BenchOptions {
            duration,
            connections,
            idle_agents,
            peers,
            hooks: !no_hooks,
            json,
            ..Default::default()
        }),
        Command::Service(command) => service(command),
        Command::Webhook(flags) => commands::webhook(*flags),
    };
    commands::exit(result)
}
