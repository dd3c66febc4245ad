//! Command-line interface: one binary is the agent and the client.
//!
//! Exit codes: 0 success; 1 the agent refused or failed the request, or sent
//! an answer this CLI cannot read (the reason is printed); 2 bad usage or
//! input; 3 the agent is not running; 4 permission denied on the control
//! socket.

mod feeds;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::{
    agent::{
        self, AgentOptions,
        attach::{AttachKind, XdpModePref},
    },
    client,
    limits::LimitSpec,
    net::{check_breadth, parse_net},
    policy::{ModeName, Policy},
    proto::{self, AllowView, BanView, LimitsView, Request, StatsView, StatusView, TopView},
    table,
};

/// Tollgate: kernel-level API traffic enforcer (XDP block/allow lists, rate
/// limits, API policy). The same binary runs the agent and talks to it.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, propagate_version = true)]
pub struct Cli {
    /// Control socket of the agent.
    #[arg(long, global = true, env = "TOLLGATE_SOCKET", default_value = proto::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// How long to wait for the agent (connect and answer) before giving up
    /// with exit code 3: default 10s, and 10m for long operations (`block
    /// import`, `block export`, `block rm --origin`, `policy reload`).
    #[arg(long, global = true, env = "TOLLGATE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (as root): load and attach the datapath, serve the CLI.
    ///
    /// Example: tollgate agent --iface eth0 --mode monitor
    Agent(AgentArgs),
    /// Manage the blocklist (dropped at the NIC).
    ///
    /// Example: tollgate block add 198.18.7.0/24 --ttl 10m --reason "scraper"
    #[command(subcommand)]
    Block(BlockCmd),
    /// Manage the allowlist (never dropped, never limited; wins over bans).
    ///
    /// Example: tollgate allow add 198.18.0.10 --reason "monitoring"
    #[command(subcommand)]
    Allow(AllowCmd),
    /// Packets and bytes by verdict and reason.
    ///
    /// Example: tollgate stats --json
    Stats(JsonFlag),
    /// Interfaces, attach mode, program ids, mode, map fill levels, uptime.
    ///
    /// Example: tollgate status
    Status(JsonFlag),
    /// Per-source rate limits at the NIC, per destination port.
    ///
    /// Example: tollgate limits set --port 8080 --pps 200 --burst 400 --max-conns 50
    #[command(subcommand)]
    Limits(LimitsCmd),
    /// Sources with the highest current rates, with passed and dropped counts
    /// (refreshes in place in a terminal; Ctrl-C to stop).
    ///
    /// Example: tollgate top -n 20
    Top(TopArgs),
    /// The agent's policy file.
    ///
    /// Example: tollgate policy reload
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Live view of API calls as they are sampled (like tcpdump, for HTTP):
    /// one line per request and response.
    ///
    /// Example: tollgate tap --port 8080 --src 198.18.0.0/24 --count 20
    Tap(TapArgs),
    /// Endpoints seen (method and path template), with hits, clients,
    /// status codes and whether credentials were used; against an OpenAPI
    /// document: documented, shadow (undocumented) or unused.
    ///
    /// Example: tollgate inventory --openapi api.yaml
    Inventory(InventoryArgs),
    /// Security events: every violation and ban the policy engine recorded
    /// (from the agent's event log; `--follow` streams new ones).
    ///
    /// Example: tollgate events --since 1h --follow
    Events(crate::detect_cli::EventsArgs),
    /// Replay requests offline through the same engine the agent runs (no
    /// kernel needed): one JSON verdict per request.
    ///
    /// Example: tollgate detect --policy policy.yaml --requests requests.jsonl
    Detect(crate::detect_cli::DetectArgs),
}

/// `tollgate tap`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Only this API port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only clients in this address or CIDR.
    #[arg(long)]
    pub src: Option<String>,
    /// Stop after this many lines.
    #[arg(long)]
    pub count: Option<u64>,
}

/// `tollgate inventory`.
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// What to do (default: list).
    #[command(subcommand)]
    pub cmd: Option<InventoryCmd>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Compare with this OpenAPI 3 document (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    pub openapi: Option<PathBuf>,
}

/// `tollgate inventory ...`.
#[derive(Debug, Subcommand)]
pub enum InventoryCmd {
    /// Write an OpenAPI 3 skeleton of what was observed.
    ///
    /// Example: tollgate inventory export --openapi > observed.yaml
    Export {
        /// Export as OpenAPI (the only format so far).
        #[arg(long)]
        openapi: bool,
        /// Write to this file instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// `tollgate limits ...`.
#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// Set the limits of one destination port, or (without --port) the
    /// default for all ports. Applies at once, without reloading anything.
    ///
    /// Example: tollgate limits set --pps 1000 --burst 2000 --syn-rate 50 --syn-burst 100
    Set {
        /// Destination port; omitted: the default for every port.
        #[arg(long)]
        port: Option<u16>,
        /// Packets per second per source.
        #[arg(long)]
        pps: Option<u32>,
        /// Packets a source may send back to back (default: one second's worth).
        #[arg(long)]
        burst: Option<u32>,
        /// Bytes per second per source.
        #[arg(long)]
        bps: Option<u64>,
        /// Bytes a source may send back to back (default: one second's worth).
        #[arg(long)]
        bps_burst: Option<u64>,
        /// New TCP connections (SYN) per second per source.
        #[arg(long)]
        syn_rate: Option<u32>,
        /// SYNs a source may send back to back.
        #[arg(long)]
        syn_burst: Option<u32>,
        /// Established connections per source; new SYNs beyond it are dropped.
        #[arg(long)]
        max_conns: Option<u32>,
    },
    /// Remove the limits of one port (it falls back to the default), or the default.
    ///
    /// Example: tollgate limits clear --port 8080
    Clear {
        /// Destination port; omitted: the default.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Show the limits in force.
    ///
    /// Example: tollgate limits show --json
    Show(JsonFlag),
}

/// `tollgate top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print JSON (one snapshot, rates over one second) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How many sources.
    #[arg(short = 'n', default_value_t = 10)]
    pub n: usize,
}

/// `tollgate policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Re-read the agent's --config file and apply mode, allowlist and feed
    /// changes (bans stay, nothing detaches). An invalid file is refused with
    /// the reason and the running policy stays. The agent also reloads on SIGHUP.
    ///
    /// Example: tollgate policy reload
    Reload,
    /// Validate a policy file without applying it: exit 0 when valid,
    /// otherwise 1 and the line and field of the first error.
    ///
    /// Example: tollgate policy check /etc/tollgate/policy.yaml
    Check {
        /// The policy file.
        file: PathBuf,
    },
}

/// Log line format of the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text for people.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `tollgate agent` flags (override the config file).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Policy file (YAML); flags override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to protect (repeatable).
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// enforce: drop; monitor: count what would be dropped, pass everything.
    #[arg(long, value_enum)]
    pub mode: Option<ModeName>,
    /// Hook: xdp (default) or tc (tcx ingress, when the XDP hook is taken).
    #[arg(long, value_enum)]
    pub attach: Option<AttachKind>,
    /// XDP mode: auto (driver, falling back to generic), driver, generic.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModePref>,
    /// Leave the programs attached when the agent exits (bans keep dropping).
    #[arg(long)]
    pub keep_attached: bool,
    /// bpffs directory for pinned maps and links.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory for durable state (bans, allow entries).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often expired bans are removed from the maps.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub gc_interval: Duration,
    /// TCP port of an API to observe (repeatable; adds to the policy's `api_ports`).
    #[arg(long = "api-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub api_ports: Vec<u16>,
    /// A load balancer or ingress in front of the APIs (CIDR or preset:
    /// loopback, private, cloudflare; repeatable, adds to the policy's
    /// `trusted_proxies`): never banned or limited as one client; its
    /// connections are judged by the clients it names.
    #[arg(long = "trusted-proxy", value_name = "CIDR|PRESET[@HEADER]")]
    pub trusted_proxies: Vec<String>,
    /// Serve Prometheus metrics, /healthz and /readyz on ADDR:PORT (off by
    /// default). Loopback only unless --metrics-allow-remote.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Allow --metrics-addr on a non-loopback address (metrics show what is
    /// blocked and how much; put them behind a firewall).
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Log lines as text for people or JSON objects for log shippers.
    #[arg(long, value_enum, env = "TOLLGATE_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,
}

/// `tollgate block ...`.
#[derive(Debug, Subcommand)]
pub enum BlockCmd {
    /// Ban an address or prefix.
    ///
    /// Example: tollgate block add 198.18.0.7 --ttl 90s --reason "credential stuffing"
    Add {
        /// IPv4/IPv6 address or CIDR prefix.
        cidr: String,
        /// How long (e.g. 90s, 10m, 24h, 7d); permanent when omitted.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Free-text reason, shown by `block ls`.
        #[arg(long)]
        reason: Option<String>,
        /// Allow very broad prefixes (0.0.0.0/0, ::/0, wider than /8 or /16)
        /// and overlaps with the allowlist.
        #[arg(long)]
        force: bool,
    },
    /// Lift a ban, or with --origin every ban of a group (e.g. a feed).
    ///
    /// Example: tollgate block rm 198.18.0.7
    ///
    /// Example: tollgate block rm --origin import:drop.txt
    Rm {
        /// Address or prefix, as banned.
        #[arg(required_unless_present = "origin")]
        cidr: Option<String>,
        /// Remove every ban with this origin (as `block ls` shows it).
        #[arg(long, conflicts_with = "cidr")]
        origin: Option<String>,
    },
    /// List bans.
    ///
    /// Example: tollgate block ls --json
    Ls(JsonFlag),
    /// Import a block-list feed (FireHOL, Spamhaus DROP style): one address
    /// or CIDR per line, `#`/`;` comments, blank lines ignored. The group
    /// (--origin) becomes exactly the list: re-importing changes nothing,
    /// entries gone from the list are lifted, bans from other origins are
    /// left alone. Bad lines are reported with their numbers and the rest
    /// applied (exit 0 with a warning); exit 1 if nothing could be used.
    ///
    /// Example: tollgate block import drop.txt --origin spamhaus-drop --ttl 2d
    Import {
        /// The list, or `-` for stdin.
        file: String,
        /// How long each entry lasts (re-importing refreshes it); permanent when omitted.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Reason shown by `block ls` (default: `feed <origin>`).
        #[arg(long)]
        reason: Option<String>,
        /// Group name (default: `import:<file name>`).
        #[arg(long)]
        origin: Option<String>,
        /// Accept prefixes wider than /8 (IPv6 /16) and overlaps with the allowlist.
        #[arg(long)]
        force: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print bans as a plain list, one address or CIDR per line (`#` header
    /// with time and count), ready for `block import` or another tool.
    ///
    /// Example: tollgate block export --origin import:drop.txt > drop.txt
    Export {
        /// Only this group.
        #[arg(long)]
        origin: Option<String>,
        /// Print JSON (cidr, kind, origin, expires_at) instead.
        #[arg(long)]
        json: bool,
    },
}

/// `tollgate allow ...`.
#[derive(Debug, Subcommand)]
pub enum AllowCmd {
    /// Allowlist an address or prefix.
    ///
    /// Example: tollgate allow add 198.18.0.0/28 --reason "office"
    Add {
        /// IPv4/IPv6 address or CIDR prefix.
        cidr: String,
        /// Free-text reason.
        #[arg(long)]
        reason: Option<String>,
        /// Allow very broad prefixes.
        #[arg(long)]
        force: bool,
    },
    /// Remove an allowlist entry.
    ///
    /// Example: tollgate allow rm 198.18.0.0/28
    Rm {
        /// Address or prefix, as added.
        cidr: String,
    },
    /// List allowlist entries.
    ///
    /// Example: tollgate allow ls
    Ls(JsonFlag),
}

/// Parses `90s`, `10m`, `24h`, `7d` (and combinations like `1h30m`).
///
/// # Errors
/// When the text is not a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 90s, 10m, 24h or 7d ({e})"))
}

/// Runs the parsed command line.
#[must_use]
pub fn run(cli: Cli) -> ExitCode {
    if let Some(t) = cli.timeout {
        client::set_timeout(t.max(Duration::from_millis(100)));
    }
    match cli.command {
        Command::Agent(args) => run_agent(args, cli.socket),
        Command::Block(cmd) => run_block(cmd, &cli.socket),
        Command::Allow(cmd) => run_allow(cmd, &cli.socket),
        Command::Stats(f) => request(&cli.socket, &Request::Stats, f.json, print_stats),
        Command::Status(f) => request(&cli.socket, &Request::Status, f.json, print_status),
        Command::Limits(cmd) => run_limits(cmd, &cli.socket),
        Command::Top(args) => run_top(&args, &cli.socket),
        Command::Policy(PolicyCmd::Reload) => feeds::policy_reload(&cli.socket),
        Command::Policy(PolicyCmd::Check { file }) => crate::detect_cli::policy_check(&file),
        Command::Events(args) => crate::detect_cli::events(&args, &cli.socket),
        Command::Detect(args) => crate::detect_cli::detect(&args),
        Command::Tap(args) => crate::api_cli::tap(&args, &cli.socket),
        Command::Inventory(args) => crate::api_cli::inventory(&args, &cli.socket),
    }
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn run_agent(args: AgentArgs, socket: PathBuf) -> ExitCode {
    let policy = match args.config.as_deref().map(Policy::load).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return usage_error(e),
    };
    let ifaces = if args.ifaces.is_empty() {
        policy.interfaces.clone()
    } else {
        args.ifaces
    };
    let socket = if socket.as_os_str() == proto::DEFAULT_SOCKET {
        policy.socket.clone().unwrap_or(socket)
    } else {
        socket
    };
    let trusted_flags = match crate::policy::expand_trusted(&args.trusted_proxies) {
        Ok(t) => t,
        Err(e) => return usage_error(format!("--trusted-proxy: {}", e.message)),
    };
    let mut trusted_proxies =
        crate::policy::expand_trusted(&policy.trusted_proxies).unwrap_or_default();
    for t in &trusted_flags {
        if !trusted_proxies.contains(t) {
            trusted_proxies.push(*t);
        }
    }
    let opts = AgentOptions {
        trusted_proxies,
        trusted_flags,
        trusted_flag_entries: args.trusted_proxies.clone(),
        ifaces,
        mode: args
            .mode
            .or(policy.mode)
            .unwrap_or(ModeName::Enforce)
            .into(),
        attach: args.attach.or(policy.attach).unwrap_or(AttachKind::Xdp),
        xdp_mode: args
            .xdp_mode
            .or(policy.xdp_mode)
            .unwrap_or(XdpModePref::Auto),
        socket,
        keep_attached: args.keep_attached,
        pin_dir: args
            .pin_dir
            .or(policy.pin_dir.clone())
            .unwrap_or_else(|| agent::DEFAULT_PIN_DIR.into()),
        state_dir: args
            .state_dir
            .or(policy.state_dir.clone())
            .unwrap_or_else(|| agent::DEFAULT_STATE_DIR.into()),
        gc_interval: args.gc_interval.max(Duration::from_millis(100)),
        feeds: policy.feed_jobs(),
        mode_flag: args.mode.is_some(),
        metrics_addr: args
            .metrics_addr
            .or(policy.metrics.as_ref().map(|m| m.listen)),
        metrics_allow_remote: args.metrics_allow_remote
            || policy.metrics.as_ref().is_some_and(|m| m.allow_remote),
        config: args.config.clone(),
        allowlist: policy.allowlist.clone(),
        rate_limit: policy.rate_limit.clone(),
        api_ports: {
            let mut p = policy.api_ports.clone();
            p.extend(&args.api_ports);
            p.sort_unstable();
            p.dedup();
            p
        },
        sampling: policy.sampling,
        policy: policy.clone(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_cidr(cidr: &str, force: bool) -> Result<(), ExitCode> {
    let net = parse_net(cidr).map_err(usage_error)?;
    check_breadth(net, force).map_err(usage_error)
}

fn run_block(cmd: BlockCmd, socket: &std::path::Path) -> ExitCode {
    match cmd {
        BlockCmd::Add {
            cidr,
            ttl,
            reason,
            force,
        } => {
            if let Err(code) = check_cidr(&cidr, force) {
                return code;
            }
            let ttl_secs = ttl.map(|d| d.as_secs());
            if let Err(e) = agent::state::check_ttl(ttl_secs) {
                return usage_error(e);
            }
            if ttl.is_some_and(|d| d.subsec_nanos() != 0) {
                return usage_error("ttl must be a whole number of seconds");
            }
            if let Err(e) = agent::state::check_reason(reason.as_deref()) {
                return usage_error(e);
            }
            let req = Request::BlockAdd {
                cidr,
                ttl_secs,
                reason,
                force,
            };
            request(socket, &req, false, |v| {
                let b: BanView = decode(v, "a ban")?;
                match b.expires_at {
                    Some(t) => println!(
                        "blocked {} until {t}",
                        crate::net::display(&parse_or(&b.cidr))
                    ),
                    None => println!(
                        "blocked {} (permanent)",
                        crate::net::display(&parse_or(&b.cidr))
                    ),
                }
                Ok::<(), Undecodable>(())
            })
        }
        BlockCmd::Rm {
            origin: Some(origin),
            ..
        } => feeds::rm_origin(origin, socket),
        BlockCmd::Rm { cidr, origin: None } => {
            let Some(cidr) = cidr else {
                return usage_error("give the address or prefix to unblock, or --origin NAME");
            };
            if let Err(code) = check_cidr(&cidr, true) {
                return code;
            }
            request(
                socket,
                &Request::BlockRm { cidr: cidr.clone() },
                false,
                |_| {
                    println!("unblocked {}", cidr.trim());
                },
            )
        }
        BlockCmd::Ls(f) => request(socket, &Request::BlockLs, f.json, print_bans),
        BlockCmd::Import {
            file,
            ttl,
            reason,
            origin,
            force,
            json,
        } => feeds::import(
            feeds::ImportArgs {
                file,
                ttl,
                reason,
                origin,
                force,
                json,
            },
            socket,
        ),
        BlockCmd::Export { origin, json } => feeds::export(origin, json, socket),
    }
}

fn parse_or(s: &str) -> ipnet::IpNet {
    s.parse().unwrap_or_else(|_| ipnet::IpNet::default())
}

fn run_allow(cmd: AllowCmd, socket: &std::path::Path) -> ExitCode {
    match cmd {
        AllowCmd::Add {
            cidr,
            reason,
            force,
        } => {
            if let Err(code) = check_cidr(&cidr, force) {
                return code;
            }
            if let Err(e) = agent::state::check_reason(reason.as_deref()) {
                return usage_error(e);
            }
            let req = Request::AllowAdd {
                cidr: cidr.clone(),
                reason,
                force,
            };
            request(socket, &req, false, |_| println!("allowed {}", cidr.trim()))
        }
        AllowCmd::Rm { cidr } => {
            if let Err(code) = check_cidr(&cidr, true) {
                return code;
            }
            request(
                socket,
                &Request::AllowRm { cidr: cidr.clone() },
                false,
                |_| {
                    println!("removed {} from the allowlist", cidr.trim());
                },
            )
        }
        AllowCmd::Ls(f) => request(socket, &Request::AllowLs, f.json, print_allows),
    }
}

fn run_limits(cmd: LimitsCmd, socket: &std::path::Path) -> ExitCode {
    match cmd {
        LimitsCmd::Set {
            port,
            pps,
            burst,
            bps,
            bps_burst,
            syn_rate,
            syn_burst,
            max_conns,
        } => {
            let spec = LimitSpec {
                pps,
                burst,
                bps,
                bps_burst,
                syn_rate,
                syn_burst,
                max_conns,
            };
            if let Err(e) = spec.validate() {
                return usage_error(e);
            }
            if port == Some(0) {
                return usage_error("--port must be 1-65535 (omit it for the default)");
            }
            request(
                socket,
                &Request::LimitsSet { port, spec },
                false,
                print_limits,
            )
        }
        LimitsCmd::Clear { port } => {
            request(socket, &Request::LimitsClear { port }, false, print_limits)
        }
        LimitsCmd::Show(f) => request(socket, &Request::LimitsShow, f.json, print_limits),
    }
}

fn fmt_spec(s: &LimitSpec) -> Vec<String> {
    let o = |v: Option<u32>| v.map_or_else(|| "-".into(), |v| v.to_string());
    let o64 = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| v.to_string());
    vec![
        o(s.pps),
        o(s.burst.or(s.pps)),
        o64(s.bps),
        o(s.syn_rate),
        o(s.syn_burst.or(s.syn_rate)),
        o(s.max_conns),
    ]
}

fn print_limits(v: &Value) -> Result<(), Undecodable> {
    let l: LimitsView = decode(v, "rate limits")?;
    let mut rows = Vec::new();
    if let Some(d) = &l.default {
        let mut r = vec!["default".to_owned()];
        r.extend(fmt_spec(d));
        rows.push(r);
    }
    for (p, s) in &l.ports {
        let mut r = vec![p.to_string()];
        r.extend(fmt_spec(s));
        rows.push(r);
    }
    if rows.is_empty() {
        println!("no rate limits");
    } else {
        print!(
            "{}",
            table::render(
                &[
                    "PORT",
                    "PPS",
                    "BURST",
                    "BPS",
                    "SYN/S",
                    "SYN BURST",
                    "MAX CONNS"
                ],
                &rows
            )
        );
    }
    println!(
        "IPv6 clients limited per /{}; a source exceeding for {}s is banned for {}",
        l.ipv6_prefix,
        l.ban_after_secs,
        l.ban_ttls_secs
            .iter()
            .map(|t| humantime::format_duration(Duration::from_secs(*t)).to_string())
            .collect::<Vec<_>>()
            .join(", then ")
    );
    Ok(())
}

fn run_top(args: &TopArgs, socket: &std::path::Path) -> ExitCode {
    use std::io::IsTerminal as _;
    let req = Request::Top { n: args.n };
    // Prime a snapshot so the next answer carries rates.
    if let Err(e) = client::call(socket, &req) {
        eprintln!("error: {e}");
        return ExitCode::from(e.exit_code());
    }
    let live = !args.json && std::io::stdout().is_terminal();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if live {
            // Home the cursor and clear: refresh in place.
            print!("\x1b[H\x1b[2J");
        }
        let code = request(socket, &req, args.json, print_top);
        if !live || code != ExitCode::SUCCESS {
            return code;
        }
    }
}

fn print_top(v: &Value) -> Result<(), Undecodable> {
    let rows: Vec<TopView> = decode(v, "a list of sources")?;
    if rows.is_empty() {
        println!("no rate-limited traffic seen (limits apply once set: tollgate limits set ...)");
        return Ok(());
    }
    let rate = |r: Option<f64>| r.map_or_else(|| "-".into(), |r| format!("{r:.0}/s"));
    let t: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.client.clone(),
                r.port.map_or_else(|| "default".into(), |p| p.to_string()),
                rate(r.pass_rate),
                rate(r.drop_rate),
                r.passed.to_string(),
                r.dropped.to_string(),
                r.conns.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "CLIENT",
                "PORT",
                "PASS RATE",
                "DROP RATE",
                "PASSED",
                "DROPPED",
                "CONNS"
            ],
            &t
        )
    );
    Ok(())
}

/// What printing an answer for people came to: `()` when it cannot fail, or
/// a [`Result`] when the answer must first be decoded.
trait Shown {
    fn exit_code(self) -> ExitCode;
}

impl Shown for () {
    fn exit_code(self) -> ExitCode {
        ExitCode::SUCCESS
    }
}

impl Shown for Result<(), Undecodable> {
    fn exit_code(self) -> ExitCode {
        match self {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    }
}

/// An answer the CLI cannot read (an agent of another version, most
/// likely): an error, never an empty table.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the agent's answer as {what} (is the agent the same version as this CLI?): {source}"
)]
struct Undecodable {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

/// Decodes the data of an answer.
fn decode<T: serde::de::DeserializeOwned>(v: &Value, what: &'static str) -> Result<T, Undecodable> {
    serde_json::from_value(v.clone()).map_err(|source| Undecodable { what, source })
}

/// Sends a request; prints the data as JSON or through `human`.
fn request<S: Shown>(
    socket: &std::path::Path,
    req: &Request,
    json: bool,
    human: impl FnOnce(&Value) -> S,
) -> ExitCode {
    request_within(socket, req, client::timeout(), json, human)
}

/// [`request`] with its own timeout (long operations).
fn request_within<S: Shown>(
    socket: &std::path::Path,
    req: &Request,
    limit: Duration,
    json: bool,
    human: impl FnOnce(&Value) -> S,
) -> ExitCode {
    match client::call_within(socket, req, limit) {
        Err(e) => {
            eprintln!("error: {}", crate::text::printable(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
        Ok(resp) if !resp.ok => {
            eprintln!(
                "error: {}",
                crate::text::printable(&resp.error.unwrap_or_else(|| "request failed".into()))
            );
            ExitCode::from(1)
        }
        Ok(resp) => {
            if let Some(w) = &resp.warning {
                eprintln!("warning: {}", crate::text::printable(w));
            }
            let data = resp.data.unwrap_or(Value::Null);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
                ExitCode::SUCCESS
            } else {
                human(&data).exit_code()
            }
        }
    }
}

fn ttl_left(secs: Option<u64>) -> String {
    secs.map_or_else(
        || "never".into(),
        |s| humantime::format_duration(Duration::from_secs(s)).to_string(),
    )
}

fn print_bans(v: &Value) -> Result<(), Undecodable> {
    let bans: Vec<BanView> = decode(v, "a list of bans")?;
    if bans.is_empty() {
        println!("no bans");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = bans
        .iter()
        .map(|b| {
            vec![
                crate::net::display(&parse_or(&b.cidr)),
                b.kind.name().to_owned(),
                crate::text::printable(&b.reason).into_owned(),
                ttl_left(b.ttl_remaining_secs),
                b.hits.to_string(),
                crate::text::printable(&b.origin).into_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["ADDRESS", "KIND", "REASON", "EXPIRES IN", "HITS", "ORIGIN"],
            &rows
        )
    );
    Ok(())
}

fn print_allows(v: &Value) -> Result<(), Undecodable> {
    let allows: Vec<AllowView> = decode(v, "a list of allowlist entries")?;
    if allows.is_empty() {
        println!("no allowlist entries");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = allows
        .iter()
        .map(|a| {
            vec![
                crate::net::display(&parse_or(&a.cidr)),
                crate::text::printable(&a.reason).into_owned(),
                a.hits.to_string(),
                crate::text::printable(&a.origin).into_owned(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["ADDRESS", "REASON", "HITS", "ORIGIN"], &rows)
    );
    Ok(())
}

fn print_stats(v: &Value) -> Result<(), Undecodable> {
    let s: StatsView = decode(v, "statistics")?;
    let rows: Vec<Vec<String>> = s
        .counters
        .iter()
        .map(|c| {
            vec![
                c.verdict.clone(),
                c.reason.clone(),
                c.packets.to_string(),
                c.bytes.to_string(),
            ]
        })
        .chain(s.totals.iter().map(|c| {
            vec![
                c.verdict.clone(),
                "(total)".into(),
                c.packets.to_string(),
                c.bytes.to_string(),
            ]
        }))
        .collect();
    print!(
        "{}",
        table::render(&["VERDICT", "REASON", "PACKETS", "BYTES"], &rows)
    );
    Ok(())
}

fn print_status(v: &Value) -> Result<(), Undecodable> {
    let s: StatusView = decode(v, "a status")?;
    println!(
        "tollgate {}  mode: {}  uptime: {}",
        s.version,
        s.mode,
        ttl_left(Some(s.uptime_secs))
    );
    println!(
        "pins: {}  state: {}  store: {}",
        s.pin_dir,
        s.state_dir,
        crate::text::printable(&s.store)
    );
    if let Some(r) = &s.policy_refused {
        let ago = crate::clock::unix_now().saturating_sub(r.at);
        println!(
            "last policy reload refused {} ago: {}",
            ttl_left(Some(ago)),
            crate::text::printable(&r.reason)
        );
    }
    println!();
    let rows: Vec<Vec<String>> = s
        .interfaces
        .iter()
        .map(|a| {
            vec![
                a.iface.clone(),
                a.ifindex.to_string(),
                a.attach.clone(),
                a.program_id.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["INTERFACE", "IFINDEX", "ATTACH", "PROGRAM ID"], &rows)
    );
    println!();
    let rows: Vec<Vec<String>> = s
        .maps
        .iter()
        .map(|m| {
            let pct = if m.capacity == 0 {
                0.0
            } else {
                m.entries as f64 * 100.0 / f64::from(m.capacity)
            };
            vec![
                m.name.clone(),
                m.entries.to_string(),
                m.capacity.to_string(),
                format!("{pct:.1}%"),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["MAP", "ENTRIES", "CAPACITY", "FILL"], &rows)
    );
    if let Some(sm) = &s.sampling {
        println!(
            "\nAPI ports {:?}: first packets of each flow + 1 in {} (configured 1 in {}); \
             {} requests, {} responses parsed, {} truncated; {} TLS and {} other samples skipped; \
             {} unparseable requests; {} flows followed; policy engine: {} messages with violations, {} clients scored, \
             {} tracked by the API checks",
            sm.api_ports,
            sm.one_in_effective,
            sm.one_in_configured,
            sm.flows.requests,
            sm.flows.responses,
            sm.flows.truncated,
            sm.flows.tls,
            sm.flows.other,
            sm.flows.unparseable,
            sm.flows_followed,
            sm.findings,
            sm.clients_scored,
            sm.clients_tracked
        );
    }
    if let Some(k) = &s.samples_kernel
        && k.taken + k.lost + k.skipped > 0
    {
        println!(
            "datapath samples: {} taken, {} lost (ring buffer full), {} skipped by policy",
            k.taken, k.lost, k.skipped
        );
    }
    if let Some(t) = &s.tls {
        print!("{}", crate::tls::describe(t));
    }
    Ok(())
}
