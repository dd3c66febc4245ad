//! The command line's definitions: commands, flags and their help text.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    policy::{AttachKind, ModeName, XdpModePref},
    proto,
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
    /// Against a protobuf descriptor set, the same for gRPC methods.
    ///
    /// Example: tollgate inventory --openapi api.yaml
    Inventory(InventoryArgs),
    /// Security events: every violation and ban the policy engine recorded
    /// (from the agent's event log; `--follow` streams new ones).
    ///
    /// Example: tollgate events --since 1h --follow
    Events(EventsArgs),
    /// Replay requests offline through the same engine the agent runs (no
    /// kernel needed): one JSON verdict per request.
    ///
    /// Example: tollgate detect --policy policy.yaml --requests requests.jsonl
    Detect(DetectArgs),
    /// The fleet (bans shared through etcd): etcd's members, this host's
    /// link, and every host's last report.
    ///
    /// Example: tollgate cluster status
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

/// `tollgate cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// etcd members (reachable, leader, revision), this host's link
    /// (connected, applied revision and lag behind etcd, outbox depth,
    /// drift), and each host of the fleet with its last sync.
    ///
    /// Example: tollgate cluster status --json
    Status(JsonFlag),
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
    /// Compare gRPC methods with this protobuf descriptor set (what
    /// `protoc --include_imports --descriptor_set_out=FILE` writes): each
    /// service method is `POST /package.Service/Method`.
    #[arg(long, value_name = "FILE")]
    pub descriptor_set: Option<PathBuf>,
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
    /// Only the values given change; the others keep their current value
    /// (--replace sets exactly the values given).
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
        /// Drop the values not given (the port's limits become exactly these).
        #[arg(long)]
        replace: bool,
        /// Print the limits in force afterwards as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the limits of one port (it falls back to the default), or the default.
    ///
    /// Example: tollgate limits clear --port 8080
    Clear {
        /// Destination port; omitted: the default.
        #[arg(long)]
        port: Option<u16>,
        /// Print the limits in force afterwards as JSON.
        #[arg(long)]
        json: bool,
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
    Reload(JsonFlag),
    /// Validate a policy file without applying it: exit 0 when valid,
    /// otherwise 1 and the line and field of the first error.
    ///
    /// Example: tollgate policy check /etc/tollgate/policy.yaml
    Check {
        /// The policy file.
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
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
    /// A protobuf descriptor set of the gRPC services (`protoc
    /// --include_imports --descriptor_set_out=FILE`; over the policy's
    /// `grpc.descriptor_set`): the inventory marks gRPC methods documented,
    /// shadow or unused, and findings name request fields
    /// (`protobuf:LoginRequest.password`).
    #[arg(long, value_name = "FILE")]
    pub descriptor_set: Option<PathBuf>,
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
    /// Share bans with a fleet through etcd: its client URLs, comma-separated
    /// (overrides `cluster.endpoints`).
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub cluster_endpoints: Vec<String>,
    /// The fleet to share bans with (default `default`; overrides `cluster.fleet`).
    #[arg(long, value_name = "NAME")]
    pub cluster_fleet: Option<String>,
    /// This host's name in the fleet (default: the hostname; overrides
    /// `cluster.host_id`).
    #[arg(long, value_name = "ID")]
    pub cluster_host_id: Option<String>,
    /// mTLS to etcd from a directory holding `tls.crt`, `tls.key` and
    /// `ca.crt` (a Kubernetes TLS Secret's names; overrides `cluster.tls`).
    #[arg(long, value_name = "DIR")]
    pub cluster_tls_dir: Option<PathBuf>,
    /// Log lines as text for people or JSON objects for log shippers.
    #[arg(long, value_enum, env = "TOLLGATE_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,
}

/// `tollgate block ...`.
#[derive(Debug, Subcommand)]
pub enum BlockCmd {
    /// Ban addresses or prefixes. Adding one that is already banned replaces
    /// its TTL and reason (so `add` is idempotent). Loopback, unspecified,
    /// multicast and broadcast addresses and this host's own addresses are
    /// refused without --force. Every address is checked before any is sent.
    ///
    /// Example: tollgate block add 198.18.0.7 --ttl 90s --reason "credential stuffing"
    ///
    /// Example: tollgate block add 198.18.0.7 198.18.0.8 198.18.9.0/24 --ttl 1h
    Add {
        /// IPv4/IPv6 addresses or CIDR prefixes.
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        /// How long (e.g. 90s, 10m, 24h, 7d); permanent when omitted.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Free-text reason, shown by `block ls`.
        #[arg(long)]
        reason: Option<String>,
        /// Allow very broad prefixes (0.0.0.0/0, ::/0, wider than /8 or /16),
        /// overlaps with the allowlist and trusted proxies, special addresses
        /// (loopback, multicast, ...) and this host's own addresses.
        #[arg(long)]
        force: bool,
        /// Print the outcome per address as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift bans, or with --origin every ban of a group (e.g. a feed). A
    /// prefix is lifted only as banned: `block test ADDR` names the entries
    /// that cover an address.
    ///
    /// Example: tollgate block rm 198.18.0.7 198.18.0.8
    ///
    /// Example: tollgate block rm --exist 198.18.0.7
    ///
    /// Example: tollgate block rm --origin import:drop.txt --dry-run
    Rm {
        /// Addresses or prefixes, as banned.
        #[arg(required_unless_present = "origin", value_name = "CIDR")]
        cidrs: Vec<String>,
        /// Remove every ban with this origin (as `block ls` shows it).
        #[arg(long, conflicts_with = "cidrs")]
        origin: Option<String>,
        /// In a fleet: lift the ban on this host only (an emergency; the
        /// other hosts keep it, and a resync may bring it back).
        #[arg(long, conflicts_with = "origin")]
        local: bool,
        /// An address that is not banned is no error (like `ipset -exist`).
        #[arg(long, conflicts_with = "origin")]
        exist: bool,
        /// With --origin: only list what would be lifted.
        #[arg(long, requires = "origin")]
        dry_run: bool,
        /// With --origin: lift without asking (on a terminal, lifting more
        /// than 10 bans asks first).
        #[arg(long, short = 'y', requires = "origin")]
        yes: bool,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Whether an address is blocked, and by what: every ban covering it
    /// (host entry, ranges, feed groups), allowlist entries that override
    /// them, a trusted proxy covering it, its rate-limit state, and whether
    /// the kernel maps agree with the store. Exit 0: blocked; 1: not
    /// blocked; 2 or more: error (3: agent not running, 4: permission).
    ///
    /// Example: tollgate block test 198.18.91.5
    ///
    /// Example: tollgate block test 198.18.91.5 --json
    Test {
        /// The IPv4/IPv6 address.
        address: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List bans, filtered and paged by the agent (sorted by address).
    ///
    /// Example: tollgate block ls --json
    ///
    /// Example: tollgate block ls --match 198.18.0.0/16 --kind feed --expiring-within 1h --limit 50
    Ls(BlockLsArgs),
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
        /// Accept prefixes wider than /8 (IPv6 /16), overlaps with the
        /// allowlist or a trusted proxy, loopback and other special
        /// addresses, and this host's own.
        #[arg(long)]
        force: bool,
        /// Change nothing: report what would be added, updated and lifted.
        #[arg(long)]
        dry_run: bool,
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
        /// Print JSON instead: the rows of `block ls --json` in `{"generated_at", "total", "offset", "bans"}`.
        #[arg(long)]
        json: bool,
    },
}

/// `tollgate block ls`.
#[derive(Debug, Args)]
pub struct BlockLsArgs {
    /// Print JSON (an array of bans; the page only, when paged).
    #[arg(long)]
    pub json: bool,
    /// Only bans sharing an address with this address or prefix (the ranges
    /// covering an address, or the entries inside a prefix).
    #[arg(long = "match", value_name = "CIDR")]
    pub matching: Option<String>,
    /// Only this kind: manual, rate-limit, policy, feed, crowdsec.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this origin (group), as the ORIGIN column shows it.
    #[arg(long)]
    pub origin: Option<String>,
    /// Only reasons containing this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Only bans expiring within this time (e.g. 10m, 24h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expiring_within: Option<Duration>,
    /// Show at most N bans.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Skip the first N matching bans.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,
}

/// `tollgate allow ...`.
#[derive(Debug, Subcommand)]
pub enum AllowCmd {
    /// Allowlist addresses or prefixes (adding one already listed replaces
    /// its reason).
    ///
    /// Example: tollgate allow add 198.18.0.0/28 198.18.0.99 --reason "office"
    Add {
        /// IPv4/IPv6 addresses or CIDR prefixes.
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        /// Free-text reason.
        #[arg(long)]
        reason: Option<String>,
        /// Allow very broad prefixes.
        #[arg(long)]
        force: bool,
        /// Print the outcome per address as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove allowlist entries.
    ///
    /// Example: tollgate allow rm 198.18.0.0/28
    Rm {
        /// Addresses or prefixes, as added.
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        /// An entry that is not listed is no error (like `ipset -exist`).
        #[arg(long)]
        exist: bool,
        /// Print the outcome per address as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List allowlist entries.
    ///
    /// Example: tollgate allow ls
    Ls(JsonFlag),
    /// Import allowlist entries from a file (same formats as `block
    /// import`: one address or CIDR per line, `#`/`;` comments). Every line
    /// is checked first: one bad line changes nothing (exit 2). Entries
    /// listed already are left as they are; if the agent refuses one, the
    /// entries this import added are removed again (exit 1).
    ///
    /// Example: tollgate allow import offices.txt --reason office --dry-run
    Import {
        /// The list, or `-` for stdin.
        file: String,
        /// Reason shown by `allow ls`.
        #[arg(long)]
        reason: Option<String>,
        /// Accept prefixes wider than /8 (IPv6 /16).
        #[arg(long)]
        force: bool,
        /// Change nothing: check every line and list what would be added.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses `90s`, `10m`, `24h`, `7d` (and combinations like `1h30m`).
///
/// # Errors
/// When the text is not a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    // `M` is a month to the parser and a minute to many people: refuse it.
    let ambiguous = s
        .split(|c: char| c.is_ascii_digit() || c.is_whitespace())
        .any(|unit| unit == "M");
    if ambiguous {
        return Err(format!(
            "'{s}': `M` is ambiguous (month or minute?): write `m` or `min` for minutes, \
             `30d` or `1month` for a month"
        ));
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 90s, 10m, 24h or 7d ({e})"))
}

/// `tollgate detect`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["pcap", "requests"])))]
pub struct DetectArgs {
    /// Policy file (default: the built-in policy the agent uses without one).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// A capture (pcap or pcapng) of HTTP/1.x traffic; TCP streams are
    /// reassembled the way the agent does.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// JSON Lines, one request per line: `{"id":…, "raw":"GET / HTTP/1.1\r\n…",
    /// "src":"198.18.0.1"}` (`src` optional; `-` reads standard input).
    #[arg(long, value_name = "FILE.jsonl")]
    pub requests: Option<PathBuf>,
    /// A protobuf descriptor set of the gRPC services (`protoc
    /// --include_imports --descriptor_set_out=FILE`; over the policy's
    /// `grpc.descriptor_set`), as `tollgate agent --descriptor-set` takes
    /// it: findings in protobuf messages name their fields.
    #[arg(long, value_name = "FILE")]
    pub descriptor_set: Option<PathBuf>,
    /// Accepted for uniformity: the output is always JSON Lines.
    #[arg(long)]
    pub json: bool,
}

/// `tollgate events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep streaming new events (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Only events of the last DURATION (e.g. 10m, 24h).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// At most the newest N past events.
    #[arg(long, short = 'n')]
    pub limit: Option<usize>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_ambiguous_month_is_refused_and_minutes_are_not() {
        let e = parse_duration("1M").unwrap_err();
        assert!(e.contains("ambiguous"), "{e}");
        assert!(parse_duration("2h 1M").is_err());
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("1month").is_ok());
    }
}
