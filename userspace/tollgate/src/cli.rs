//! Command-line interface: one binary is the agent and the client.
//!
//! Exit codes: 0 success; 1 the agent refused or failed the request, or sent
//! an answer this CLI cannot read (the reason is printed); 2 bad usage or
//! input; 3 the agent is not running; 4 permission denied on the control
//! socket.

mod allowlist;
mod api;
mod args;
mod bulk;
mod cluster;
mod detect;
#[cfg(test)]
mod docs_check;
mod feeds;
mod progress;
mod query;
mod render;

pub use args::*;
pub use render::{fail, set_json_errors};
use render::{
    print_allows, print_limits, print_stats, print_status, print_top, request, usage_error,
};

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;

use crate::{
    agent::{self, AgentOptions},
    client,
    limits::LimitSpec,
    policy::{AttachKind, XdpModePref},
    policy::{ModeName, Policy},
    proto::{self, Request},
};

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
        Command::Policy(PolicyCmd::Reload(f)) => feeds::policy_reload(&cli.socket, f.json),
        Command::Policy(PolicyCmd::Check { file, json }) => detect::policy_check(&file, json),
        Command::Events(args) => detect::events(&args, &cli.socket),
        Command::Detect(args) => detect::detect(&args),
        Command::Tap(args) => api::tap(&args, &cli.socket),
        Command::Inventory(args) => api::inventory(&args, &cli.socket),
        Command::Cluster(ClusterCmd::Status(f)) => request(
            &cli.socket,
            &Request::ClusterStatus,
            f.json,
            cluster::print_cluster,
        ),
    }
}

/// The cluster settings: the policy's `cluster:` section with the flags
/// over it; `None` when neither names an etcd endpoint.
fn cluster_config(
    policy: &Policy,
    args: &AgentArgs,
) -> Result<Option<crate::cluster::ClusterConfig>, String> {
    let mut spec = policy.cluster.clone().unwrap_or_default();
    if !args.cluster_endpoints.is_empty() {
        spec.endpoints.clone_from(&args.cluster_endpoints);
    }
    if args.cluster_fleet.is_some() {
        spec.fleet.clone_from(&args.cluster_fleet);
    }
    if args.cluster_host_id.is_some() {
        spec.host_id.clone_from(&args.cluster_host_id);
    }
    if let Some(dir) = &args.cluster_tls_dir {
        spec.tls = Some(crate::policy::ClusterTls {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: dir.join("ca.crt"),
        });
    }
    if spec.endpoints.is_empty() {
        if args.cluster_fleet.is_some()
            || args.cluster_host_id.is_some()
            || args.cluster_tls_dir.is_some()
        {
            return Err(
                "--cluster-fleet, --cluster-host-id and --cluster-tls-dir need \
                 --cluster-endpoints (or `cluster.endpoints` in the policy)"
                    .into(),
            );
        }
        return Ok(None);
    }
    spec.check()
        .map_err(|(field, message)| format!("cluster {field}: {message}"))?;
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let cfg = crate::cluster::ClusterConfig::from_spec(&spec, &hostname);
    if let Some(m) = crate::policy::check_name(&cfg.host_id) {
        return Err(format!(
            "cluster host id (the hostname unless --cluster-host-id): {m}"
        ));
    }
    Ok(Some(cfg))
}

fn run_agent(args: AgentArgs, socket: PathBuf) -> ExitCode {
    let mut policy = match args.config.as_deref().map(Policy::load).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => return usage_error(e),
    };
    if let Some(d) = &args.descriptor_set {
        // Refused at start, with the reason, like a bad policy file.
        match crate::grpc::read_descriptor_set(d) {
            Ok(schema) => policy.grpc.schema = Some(std::sync::Arc::new(schema)),
            Err(e) => return usage_error(format!("--descriptor-set: {e}")),
        }
        policy.grpc.descriptor_set = Some(d.clone());
    }
    let cluster = match cluster_config(&policy, &args) {
        Ok(c) => c,
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
        descriptor_set: args.descriptor_set.clone(),
        cluster,
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

fn run_block(cmd: BlockCmd, socket: &std::path::Path) -> ExitCode {
    match cmd {
        BlockCmd::Add {
            cidrs,
            ttl,
            reason,
            force,
            json,
        } => {
            if let Err(code) = bulk::check_all(&cidrs, bulk::Op::BlockAdd, force) {
                return code;
            }
            let ttl_secs = ttl.map(|d| d.as_secs());
            if let Err(e) = proto::check_ttl(ttl_secs) {
                return usage_error(e);
            }
            if ttl.is_some_and(|d| d.subsec_nanos() != 0) {
                return usage_error("ttl must be a whole number of seconds");
            }
            if let Err(e) = proto::check_reason(reason.as_deref()) {
                return usage_error(e);
            }
            bulk::run(socket, bulk::Op::BlockAdd, &cidrs, json, |cidr| {
                Request::BlockAdd {
                    cidr: cidr.to_owned(),
                    ttl_secs,
                    reason: reason.clone(),
                    force,
                }
            })
        }
        BlockCmd::Rm {
            origin: Some(origin),
            dry_run,
            yes,
            json,
            ..
        } => {
            if !dry_run && !yes && !feeds::confirm_rm_origin(&origin, socket) {
                return usage_error("nothing lifted (pass --yes to lift without asking)");
            }
            feeds::rm_origin(origin, dry_run, json, socket)
        }
        BlockCmd::Rm {
            cidrs,
            origin: None,
            local,
            exist,
            json,
            ..
        } => {
            if cidrs.is_empty() {
                return usage_error("give the address or prefix to unblock, or --origin NAME");
            }
            if let Err(code) = bulk::check_all(&cidrs, bulk::Op::BlockRm, true) {
                return code;
            }
            bulk::run(socket, bulk::Op::BlockRm, &cidrs, json, |cidr| {
                Request::BlockRm {
                    cidr: cidr.to_owned(),
                    local,
                    exist,
                }
            })
        }
        BlockCmd::Test { address, json } => query::test(&address, json, socket),
        BlockCmd::Ls(args) => query::ls(&args, socket),
        BlockCmd::Import {
            file,
            ttl,
            reason,
            origin,
            force,
            dry_run,
            json,
        } => feeds::import(
            feeds::ImportArgs {
                file,
                ttl,
                reason,
                origin,
                force,
                dry_run,
                json,
            },
            socket,
        ),
        BlockCmd::Export { origin, json } => feeds::export(origin, json, socket),
    }
}

fn run_allow(cmd: AllowCmd, socket: &std::path::Path) -> ExitCode {
    match cmd {
        AllowCmd::Add {
            cidrs,
            reason,
            force,
            json,
        } => {
            if let Err(code) = bulk::check_all(&cidrs, bulk::Op::AllowAdd, force) {
                return code;
            }
            if let Err(e) = proto::check_reason(reason.as_deref()) {
                return usage_error(e);
            }
            bulk::run(socket, bulk::Op::AllowAdd, &cidrs, json, |cidr| {
                Request::AllowAdd {
                    cidr: cidr.to_owned(),
                    reason: reason.clone(),
                    force,
                }
            })
        }
        AllowCmd::Rm { cidrs, exist, json } => {
            if let Err(code) = bulk::check_all(&cidrs, bulk::Op::AllowRm, true) {
                return code;
            }
            bulk::run(socket, bulk::Op::AllowRm, &cidrs, json, |cidr| {
                Request::AllowRm {
                    cidr: cidr.to_owned(),
                    exist,
                }
            })
        }
        AllowCmd::Ls(f) => request(socket, &Request::AllowLs, f.json, print_allows),
        AllowCmd::Import {
            file,
            reason,
            force,
            dry_run,
            json,
        } => allowlist::import(
            &allowlist::AllowImportArgs {
                file,
                reason,
                force,
                dry_run,
                json,
            },
            socket,
        ),
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
            replace,
            json,
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
            // Merged with the limits in force, a burst may come without its
            // rate: check the values given, with stand-in rates.
            let check = if replace {
                spec
            } else {
                spec.or(Some(&LimitSpec {
                    pps: Some(1),
                    bps: Some(1),
                    syn_rate: Some(1),
                    ..LimitSpec::default()
                }))
            };
            if let Err(e) = check.validate() {
                return usage_error(e);
            }
            if spec == LimitSpec::default() {
                return usage_error(
                    "no limit given (use `tollgate limits clear` to remove limits)",
                );
            }
            if port == Some(0) {
                return usage_error("--port must be 1-65535 (omit it for the default)");
            }
            request(
                socket,
                &Request::LimitsSet {
                    port,
                    spec,
                    merge: !replace,
                },
                json,
                print_limits,
            )
        }
        LimitsCmd::Clear { port, json } => {
            request(socket, &Request::LimitsClear { port }, json, print_limits)
        }
        LimitsCmd::Show(f) => request(socket, &Request::LimitsShow, f.json, print_limits),
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn agent_args(extra: &[&str]) -> AgentArgs {
        let argv = [&["tollgate", "agent", "--iface", "lo"][..], extra].concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Agent(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_tls_dir_flag_names_a_secret_s_three_files() {
        let args = agent_args(&[
            "--cluster-endpoints",
            "https://198.18.0.1:2379,https://198.18.0.2:2379",
            "--cluster-host-id",
            "node-1",
            "--cluster-tls-dir",
            "/etc/tollgate-etcd",
        ]);
        let cfg = cluster_config(&Policy::default(), &args).unwrap().unwrap();
        let tls = cfg.tls.unwrap();
        assert_eq!(cfg.endpoints.len(), 2);
        assert_eq!(tls.cert, PathBuf::from("/etc/tollgate-etcd/tls.crt"));
        assert_eq!(tls.key, PathBuf::from("/etc/tollgate-etcd/tls.key"));
        assert_eq!(tls.ca, PathBuf::from("/etc/tollgate-etcd/ca.crt"));
        // TLS needs https:// endpoints, and a TLS directory needs endpoints.
        let plain = agent_args(&[
            "--cluster-endpoints",
            "http://198.18.0.1:2379",
            "--cluster-tls-dir",
            "/x",
        ]);
        assert!(cluster_config(&Policy::default(), &plain).is_err());
        let alone = agent_args(&["--cluster-tls-dir", "/x"]);
        assert!(cluster_config(&Policy::default(), &alone).is_err());
    }
}
