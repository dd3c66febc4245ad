//! `tollgate agent`: loads and attaches the datapath, restores state, serves
//! the control socket, expires bans, and shuts down cleanly on SIGINT/SIGTERM.
//!
//! [`state::AgentState`] owns the decisions (bans, allow entries, expiry,
//! escalation) and reaches the kernel only through [`maps::Maps`]: start-up
//! uses the concrete [`Datapath`] to attach programs and take the ring
//! buffers, then the state drives the maps. Its unit tests
//! (`agent/state/tests.rs`) run the same decisions over `maps::MemMaps`.

pub mod api;
mod attach;
mod cluster;
mod crowdsec;
pub(crate) mod enforce;
mod feeds;
mod http;
mod loss;
mod maps;
mod ratelimit;
mod reload;
mod ring;
mod startup;
mod state;
pub(crate) use state::AgentState;

use std::{
    fs::File,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::broadcast,
};
use tollgate_common::Mode;
use tracing::{debug, error, info, warn};

use crate::{
    datapath::{Capacities, Datapath},
    events::EventLog,
    policy::{AttachKind, XdpModePref},
    proto::{MAX_REQUEST_BYTES, Request, Response},
    store::{RedbStore, Store},
};

/// Default bpffs directory for pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tollgate";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tollgate";

/// Everything `tollgate agent` needs, after flags and config file are merged.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// `--descriptor-set`: the gRPC descriptor set, over the policy's
    /// `grpc.descriptor_set` (kept across reloads).
    pub descriptor_set: Option<PathBuf>,
    /// Interfaces to protect.
    pub ifaces: Vec<String>,
    /// Enforce or monitor.
    pub mode: Mode,
    /// XDP or TC.
    pub attach: AttachKind,
    /// XDP mode preference.
    pub xdp_mode: XdpModePref,
    /// Control socket path.
    pub socket: PathBuf,
    /// Leave programs attached on exit.
    pub keep_attached: bool,
    /// bpffs directory for pins.
    pub pin_dir: PathBuf,
    /// Durable state directory.
    pub state_dir: PathBuf,
    /// How often expired bans are collected.
    pub gc_interval: Duration,
    /// Allowlist entries from the config file, applied at start.
    pub allowlist: Vec<String>,
    /// The policy's `rate_limit` section.
    pub rate_limit: crate::limits::RateLimitPolicy,
    /// API ports whose traffic is sampled.
    pub api_ports: Vec<u16>,
    /// The policy's `sampling` section.
    pub sampling: api::SamplingPolicy,
    /// The policy file, for reloads.
    pub config: Option<PathBuf>,
    /// `--mode` was given on the command line (a reload keeps it).
    pub mode_flag: bool,
    /// Feeds from the policy file.
    pub feeds: Vec<crate::feed::FeedJob>,
    /// Where to serve metrics and health, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Allow a non-loopback metrics address.
    pub metrics_allow_remote: bool,
    /// The whole policy (detectors, scoring, events, routes).
    pub policy: crate::policy::Policy,
    /// Trusted proxies (policy and `--trusted-proxy`, presets expanded).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The `--trusted-proxy` flags alone (a reload keeps them).
    pub trusted_flags: Vec<ipnet::IpNet>,
    /// The `--trusted-proxy` flags as given (`CIDR|PRESET[@header]`).
    pub trusted_flag_entries: Vec<String>,
    /// Share bans with the fleet through etcd (`None`: this host alone).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// CPU the agent has used so far (all threads), for the start-up phases.
fn process_cpu() -> std::time::Duration {
    crate::clock::cpu(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
}

/// Runs the agent until SIGINT/SIGTERM.
///
/// # Errors
/// When it cannot start (not root, another agent running, load or attach
/// failure); the error says which.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let mut agent = start(&opts).await?;
    serve_until_signal(&opts, &mut agent).await?;
    shutdown(&opts, agent)
}

/// What start-up hands to the main loop and to shutdown.
struct Running {
    state: Arc<Mutex<AgentState>>,
    api: api::ApiHandle,
    event_log: Arc<Mutex<EventLog>>,
    listener: UnixListener,
    reloader: reload::Reloader,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    sockops: Option<attach::Attachment>,
    /// The state directory's and the interfaces' locks, held to the end.
    _locks: (File, Vec<File>),
}

/// Start-up: refuses what it can before anything is loaded, then loads the
/// datapath, restores state, attaches, binds the control socket and starts
/// the ring-buffer readers and the reloader. A failed start detaches what it
/// attached and removes the pins it created.
async fn start(opts: &AgentOptions) -> anyhow::Result<Running> {
    let t_start = std::time::Instant::now();
    info!(cpu = ?process_cpu(), "starting");
    // Large blocks (the ban tables, a restore's batches) are mapped on
    // their own and unmapped when freed. glibc otherwise raises that
    // threshold, and the trim threshold with it, as large blocks are freed:
    // a start's tables outgrown on the restore threads then stayed in
    // those threads' heaps, which `malloc_trim` does not shrink (+17 MiB
    // resident with a million bans).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: only sets an allocator parameter; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the agent must run as root: it loads eBPF programs and attaches them to interfaces");
    }
    if opts.ifaces.is_empty() {
        bail!(
            "no interface to protect: pass --iface NAME (repeatable) or set `interfaces` in the config file"
        );
    }
    // Everything that can be refused is refused before anything is loaded.
    startup::preflight(opts)?;
    if let Some(dir) = opts.socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_socket_dir(dir)?;
    }
    make_private_dir(&opts.state_dir)?;
    let lock = take_lock(&opts.state_dir)?;
    let iface_locks = startup::lock_interfaces(&opts.ifaces)?;
    if UnixStream::connect(&opts.socket).await.is_ok() {
        bail!(
            "another tollgate agent is already serving {}; stop it first",
            opts.socket.display()
        );
    }
    // Bind early so a bad address fails before anything is attached; until
    // the state is handed over, /healthz answers and /readyz says "starting".
    let health = Arc::new(http::Health::new(opts.ifaces.len()));
    let metrics_task = match opts.metrics_addr {
        Some(addr) => {
            let l = http::bind(addr, opts.metrics_allow_remote).await?;
            Some(tokio::spawn(http::serve(l, Arc::clone(&health))))
        }
        None => None,
    };
    let maps_dir = opts.pin_dir.join("maps");
    let links_dir = opts.pin_dir.join("links");
    // A start that fails from here on removes the pins it created.
    let pins = startup::PinGuard::new(&opts.pin_dir, &[&maps_dir, &links_dir]);
    crate::datapath::ensure_bpffs(&opts.pin_dir)?;
    // The fleet's set is read from etcd while the datapath loads.
    let mut link = opts.cluster.clone().map(cluster::Link::new);
    if let Some(l) = link.as_mut() {
        l.connect();
    }
    // The maps first: the stored bans go into them while the kernel
    // verifies the programs on another thread. Nothing is attached (and
    // the control socket is not bound) before both are done, so the agent
    // never reports ready, nor starts a new program, with the maps half
    // filled. After a crash the old programs stay attached meanwhile,
    // enforcing what the pinned maps hold.
    let mut dp = Datapath::load_background(Some(&maps_dir), capacities(&opts.policy.capacity))
        .context("failed to load the datapath")?;
    dp.set_mode(opts.mode)?;
    info!(since_start = ?t_start.elapsed(), cpu = ?process_cpu(), "maps ready");

    let mut state = restore(opts, dp, link.as_ref())?;
    if let Some(l) = link.as_mut() {
        l.apply_while_loading(&mut state).await;
    }
    state
        .datapath_mut()
        .wait_programs()
        .context("failed to load the datapath")?;
    info!(
        mode = ?opts.mode,
        pins = %opts.pin_dir.display(),
        since_start = ?t_start.elapsed(),
        cpu = ?process_cpu(),
        "datapath loaded"
    );

    let mut attached = Vec::new();
    for iface in &opts.ifaces {
        match attach::attach(
            state.datapath_mut(),
            iface,
            opts.attach,
            opts.xdp_mode,
            &links_dir,
        ) {
            Ok(a) => attached.push(a),
            Err(e) => {
                // Undo what this run attached; leave earlier runs' pins alone.
                for a in attached {
                    a.detach();
                }
                return Err(e.context(format!("failed to attach to {iface}")));
            }
        }
    }
    // API sampling: ports and policy into the datapath, responses sampled
    // at tcx egress of every protected interface.
    let api_ports: std::collections::BTreeSet<u16> = opts.api_ports.iter().copied().collect();
    let pipeline = crate::engine::Pipeline::from_policy(&opts.policy)
        .context("failed to build the policy engine")?;
    let api = api::ApiHandle::new(&opts.api_ports, &opts.sampling, pipeline);
    if let Ok(mut st) = api.state.lock() {
        st.trusted.clone_from(&opts.trusted_proxies);
        st.flows.set_trusted(&opts.trusted_proxies);
        st.proxy_headers =
            crate::policy::proxy_headers(&opts.policy.trusted_proxies, &opts.trusted_flag_entries);
    }
    state
        .datapath_mut()
        .set_trusted(&opts.trusted_proxies)
        .context("failed to configure trusted proxies")?;
    if !opts.trusted_proxies.is_empty() {
        info!(proxies = ?opts.trusted_proxies, "trusted proxies: their connections are judged by the clients they carry");
    }
    let events_path = opts.policy.events.file(&opts.state_dir);
    let event_log = Arc::new(Mutex::new(
        EventLog::open(events_path.clone(), opts.policy.events.clone())
            .with_context(|| format!("failed to open the event log {}", events_path.display()))?,
    ));
    state
        .datapath_mut()
        .set_api_ports(&api_ports, opts.sampling.cfg(opts.sampling.one_in.max(1)))
        .context("failed to configure API sampling")?;
    if !api_ports.is_empty() {
        for iface in &opts.ifaces {
            match attach::attach_egress(state.datapath_mut(), iface, &links_dir) {
                Ok(a) => attached.push(a),
                Err(e) => warn!(iface, "responses will not be sampled: {e:#}"),
            }
        }
        info!(ports = ?api_ports, "sampling API traffic");
    }
    let mut wanted: Vec<(String, attach::AttachHow)> =
        attached.iter().map(|a| (a.iface.clone(), a.how)).collect();
    wanted.push((attach::SOCKOPS_PIN.into(), attach::AttachHow::Sockops));
    attach::remove_unwanted_pins(&links_dir, &wanted);
    state.attachments = attached;
    let sockops = match attach::attach_sockops(state.datapath_mut(), &links_dir) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!("concurrent-connection caps are unavailable: {e:#}");
            None
        }
    };
    let events = state.datapath_mut().take_events();
    let samples = state.datapath_mut().take_samples();
    // Only written while TLS probes are on (`tls::start`); an object
    // without it leaves TLS records unheld (see `api::read_samples`).
    let tls_news = state
        .datapath_mut()
        .ebpf_mut()
        .ok()
        .and_then(|e| e.take_map(tollgate_common::maps::TLS_NEW))
        .and_then(|m| aya::maps::RingBuf::try_from(m).ok());
    let mut capture = "nic";
    if !api_ports.is_empty() && sockops.is_some() && opts.sampling.stream {
        match state.datapath_mut().attach_stream() {
            Ok(()) => {
                capture = "socket";
                info!("API requests are taken at the socket (every request, in order)");
            }
            Err(e) => {
                warn!("requests will be sampled at the NIC instead of taken at the socket: {e:#}")
            }
        }
    }
    if let Ok(mut st) = api.state.lock() {
        capture.clone_into(&mut st.status.capture);
    }
    if !api_ports.is_empty() {
        // Requests ban only once the kernel shows it accepted them: that
        // takes the sock_ops program (handshakes) and the egress hook (the
        // server's acknowledgements). Without either, nothing bans.
        let verifier = state.datapath_mut().take_flow_verifier();
        let egress_everywhere = state
            .attachments
            .iter()
            .filter(|a| a.how == attach::AttachHow::TcxEgress)
            .count()
            == opts.ifaces.len();
        if sockops.is_none() || !egress_everywhere {
            warn!(
                "requests cannot be verified (sock_ops or the egress hook is missing): \
                 violations will be reported, but the policy engine will not ban"
            );
        }
        if let Ok(mut st) = api.state.lock() {
            st.verifier = verifier;
        }
    }

    let listener = match bind_socket(&opts.socket) {
        Ok(l) => l,
        Err(e) => {
            for a in std::mem::take(&mut state.attachments)
                .into_iter()
                .chain(sockops)
            {
                a.detach();
            }
            return Err(e);
        }
    };
    pins.keep();
    info!(
        socket = %opts.socket.display(),
        since_start = ?t_start.elapsed(),
        cpu = ?process_cpu(),
        "control socket ready"
    );
    let state = Arc::new(Mutex::new(state));
    if let Some(link) = link {
        link.spawn(&state);
    }
    spawn_readers(
        opts,
        &state,
        events,
        samples.filter(|_| !api_ports.is_empty()),
        tls_news,
        &api,
        &event_log,
    );
    if !api_ports.is_empty() {
        crate::tls::start(
            &opts.policy.tls,
            &opts.api_ports,
            &maps_dir,
            &state,
            &api.tls,
        );
    }
    health.set_state(Arc::clone(&state));
    let mut reloader = reload::Reloader::start(opts, &state);
    reloader.set_api(api.clone());
    Ok(Running {
        state,
        api,
        event_log,
        listener,
        reloader,
        metrics_task,
        sockops,
        _locks: (lock, iface_locks),
    })
}

/// The main loop until SIGINT/SIGTERM: control connections, policy reloads
/// (SIGHUP, a changed file, `policy reload`), expiry and retries.
async fn serve_until_signal(opts: &AgentOptions, agent: &mut Running) -> anyhow::Result<()> {
    let Running {
        state,
        api,
        event_log,
        listener,
        reloader,
        ..
    } = agent;
    let mut watch = tokio::time::interval(Duration::from_secs(2));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (reload_requests, mut reload_rx) = reload::channel();
    // A reload in progress: the file is read and parsed on a blocking
    // thread while this loop keeps serving; requests arriving meanwhile
    // get one more read after it.
    let mut loading = Loading::default();
    let mut sighup = signal(SignalKind::hangup())?;

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // The sweep takes the state lock, which the fleet applier may hold
    // through a store fsync: on a blocking thread, in a task of its own, it
    // stalls neither this loop (control connections wait for it) nor an
    // async worker (the fleet link runs on those).
    let sweeper = {
        let (state, event_log, every) =
            (Arc::clone(state), Arc::clone(event_log), opts.gc_interval);
        tokio::spawn(async move {
            let mut gc = tokio::time::interval(every);
            gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                gc.tick().await;
                let (state, event_log) = (Arc::clone(&state), Arc::clone(&event_log));
                let swept = tokio::task::spawn_blocking(move || {
                    if let Ok(mut s) = state.lock() {
                        s.gc();
                        s.prune_offenders();
                        s.store_retry();
                        s.watch_sample_loss();
                    }
                    if let Ok(mut log) = event_log.lock() {
                        log.tick();
                    }
                })
                .await;
                // A panic there poisoned the state lock: nothing would expire
                // and every request would fail. Exit, so that the service
                // manager restarts the agent (the maps stay pinned and
                // enforcing meanwhile).
                if let Err(e) = swept
                    && e.is_panic()
                {
                    tracing::error!(
                        "the expiry sweep panicked; exiting so that the agent is restarted"
                    );
                    std::process::exit(70);
                }
            }
        })
    };
    loop {
        tokio::select! {
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading the policy file");
                start_reload(reloader, &mut loading, None);
            }
            _ = watch.tick() => {
                if loading.task.is_none() && reloader.file_changed() {
                    info!("the policy file changed: reloading it");
                    start_reload(reloader, &mut loading, None);
                }
            }
            Some(reply) = reload_rx.recv() => {
                start_reload(reloader, &mut loading, Some(reply));
            }
            done = async {
                match loading.task.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                loading.task = None;
                let loaded = done.unwrap_or_else(|e| Err(format!("the policy reader failed: {e}")));
                let r = reloader.finish(loaded, state);
                for reply in std::mem::take(&mut loading.replies) {
                    let _ = reply.send(r.clone());
                }
                if let Some(again) = loading.again.take() {
                    let mut again = again.into_iter();
                    start_reload(reloader, &mut loading, again.next());
                    loading.replies.extend(again);
                }
            }
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let state = Arc::clone(state);
                    let api = api.clone();
                    let log = Arc::clone(event_log);
                    let reload = reload_requests.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, state, api, log, reload).await {
                            debug!("control connection: {e:#}");
                        }
                    });
                }
                Err(e) => warn!("accept on control socket failed: {e}"),
            },
        }
    }
    sweeper.abort();
    Ok(())
}

/// Shutdown: stops the reloader and the metrics endpoint, removes the
/// socket, and detaches the programs (or leaves them attached with
/// `--keep-attached`).
fn shutdown(opts: &AgentOptions, agent: Running) -> anyhow::Result<()> {
    let Running {
        state,
        mut reloader,
        metrics_task,
        sockops,
        ..
    } = agent;
    reloader.stop();
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&opts.socket);
    let mut s = state
        .lock()
        .map_err(|_| anyhow::anyhow!("agent state lock poisoned"))?;
    for a in std::mem::take(&mut s.attachments)
        .into_iter()
        .chain(sockops)
    {
        if opts.keep_attached {
            a.keep();
        } else {
            a.detach();
        }
    }
    info!("stopped");
    Ok(())
}

/// Opens the store (or runs on without it, saying so), builds the state,
/// reconciles it with the kernel maps and adds the policy's allowlist.
/// The policy's `capacity` section as the datapath's map sizes.
#[must_use]
pub fn capacities(p: &crate::policy::CapacityPolicy) -> Capacities {
    Capacities {
        block4: p.hosts_v4,
        block6: p.hosts_v6,
        block4_lpm: p.ranges_v4,
        block6_lpm: p.ranges_v6,
        allow: p.allowlist,
        buckets: p.rate_limit_sources,
        conns: p.connection_sources,
        flows: p.flows,
        samples: p.sample_ring_bytes,
    }
}

fn restore(
    opts: &AgentOptions,
    dp: Datapath,
    link: Option<&cluster::Link>,
) -> anyhow::Result<AgentState> {
    let (store, store_error): (Option<Box<dyn Store>>, _) = match RedbStore::open(&opts.state_dir) {
        Ok(s) => {
            let s: Box<dyn Store> = Box::new(s);
            (
                Some(match link {
                    Some(l) => l.wrap(s),
                    None => s,
                }),
                None,
            )
        }
        Err(e) => {
            error!(
                "{e:#}; continuing with what the kernel maps hold — changes will not be \
                 durable until the store is repaired or moved aside"
            );
            (None, Some(format!("unavailable: {e}")))
        }
    };
    let mut state = AgentState::new(
        dp,
        store,
        store_error,
        state::Dirs {
            pin_dir: opts.pin_dir.display().to_string(),
            state_dir: opts.state_dir.display().to_string(),
            policy_file: opts.config.as_ref().map(|p| p.display().to_string()),
        },
        ratelimit::RateState::from_policy(&opts.rate_limit),
        opts.trusted_proxies.clone(),
    );
    let (to_kernel, to_store) = state.reconcile();
    restore_rate_state(&mut state);
    // The restore's batches and the index's outgrown tables were freed into
    // the allocator's heap; give that memory back to the system.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; no pointer is
    // invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
    info!(
        bans = state.ban_count(),
        allows = state.allows().count(),
        restored_to_kernel = to_kernel,
        adopted_from_kernel = to_store,
        "state restored"
    );
    for cidr in &opts.allowlist {
        let resp = state.handle(Request::AllowAdd {
            cidr: cidr.clone(),
            reason: Some("config file".into()),
            force: false,
        });
        if !resp.ok {
            bail!(
                "allowlist entry '{cidr}' in the config file: {}",
                resp.error.unwrap_or_default()
            );
        }
    }
    Ok(state)
}

/// Starts the ring-buffer readers: rate-limit offenders, and API samples
/// (when API ports are sampled) with their findings enforced.
fn spawn_readers(
    opts: &AgentOptions,
    state: &Arc<Mutex<AgentState>>,
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    samples: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    tls_news: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    api: &api::ApiHandle,
    event_log: &Arc<Mutex<EventLog>>,
) {
    if let Some(ring) = events {
        let state = Arc::clone(state);
        tokio::spawn(async move {
            if let Err(e) = read_rate_events(ring, state).await {
                error!("rate-limit event reader stopped: {e:#}");
            }
        });
    }
    if let Some(ring) = samples {
        let (api, policy) = (api.clone(), opts.sampling);
        let writer = Arc::clone(state);
        let enforcer = Arc::clone(state);
        let log = Arc::clone(event_log);
        let scores = api.clone();
        tokio::spawn(async move {
            let on_findings = move |b: api::Batch| {
                let scoring = scores
                    .state
                    .lock()
                    .map(|s| s.pipeline.scoring().clone())
                    .unwrap_or_default();
                enforce::apply(&b.findings, &enforcer, &log, &scoring);
                enforce::arm_proxied(&b.proxied, &enforcer);
                if !b.stream_skips.is_empty()
                    && let Ok(mut s) = enforcer.lock()
                {
                    for (cookie, until) in &b.stream_skips {
                        // Only a saving: the agent passes over those bytes anyway.
                        let _ = s.maps.skip_stream(*cookie, *until);
                    }
                }
            };
            let set_rate = move |one_in: u32| {
                if let Ok(mut s) = writer.lock()
                    && let Err(e) = s.maps.set_sampling(policy.cfg(one_in))
                {
                    warn!("failed to change the sampling rate: {e:#}");
                }
            };
            if let Err(e) =
                api::read_samples(ring, tls_news, api, policy, set_rate, on_findings).await
            {
                error!("sample reader stopped: {e:#}");
            }
        });
    }
}

/// A reload under way: the blocking read, the replies waiting for it, and
/// the replies (or a watcher's wish) for one more read once it is done, so
/// nobody is answered with a file read before they asked.
#[derive(Default)]
struct Loading {
    task: Option<tokio::task::JoinHandle<reload::Loaded>>,
    replies: Vec<reload::Reply>,
    again: Option<Vec<reload::Reply>>,
}

/// Starts reading the policy file on a blocking thread, or queues one more
/// read after the one under way.
fn start_reload(
    reloader: &mut reload::Reloader,
    loading: &mut Loading,
    reply: Option<reload::Reply>,
) {
    if loading.task.is_some() {
        loading.again.get_or_insert_with(Vec::new).extend(reply);
        return;
    }
    match reloader.begin() {
        Ok(path) => {
            loading.task = Some(tokio::task::spawn_blocking(move || {
                reload::Reloader::load(&path)
            }));
            loading.replies.extend(reply);
        }
        Err(e) => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(e));
            } else {
                warn!("{e}");
            }
        }
    }
}

/// Limits: run-time ones from the store win over the policy file's; offence
/// history comes back too. Then they are written to the datapath.
fn restore_rate_state(state: &mut AgentState) {
    if let Some(store) = state.store.as_ref() {
        match store.limits() {
            Ok(Some(l)) => {
                info!("using rate limits last set at run time (they override the policy file's)");
                state.rate.limits = l;
            }
            Ok(None) => {}
            Err(e) => warn!("cannot read run-time limits: {e}; using the policy file's"),
        }
        match store.offences() {
            Ok(h) => state.rate.history = h.into_iter().collect(),
            Err(e) => warn!("cannot read offence history: {e}"),
        }
    }
    if let Err(e) = state.apply_limits() {
        error!("{e}");
    }
}

/// Drains the datapath's offender reports as they come.
async fn read_rate_events(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    state: Arc<Mutex<AgentState>>,
) -> anyhow::Result<()> {
    let mut ring = ring::Reader::new(ring, "event")?;
    loop {
        let mut batch = Vec::new();
        ring.drain(None, usize::MAX, |item| {
            if item.len() >= std::mem::size_of::<tollgate_common::RateEvent>() {
                // SAFETY: the datapath writes whole RateEvents (a POD type);
                // the length was checked.
                let ev: tollgate_common::RateEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                batch.push(ev);
            }
        })
        .await?;
        if !batch.is_empty()
            && let Ok(mut s) = state.lock()
        {
            for ev in &batch {
                s.on_rate_event(ev);
            }
        }
    }
}

/// One control connection: check the peer is root, read one request line,
/// answer it.
async fn serve(
    stream: UnixStream,
    state: Arc<Mutex<AgentState>>,
    api: api::ApiHandle,
    log: Arc<Mutex<EventLog>>,
    reload: reload::Requests,
) -> anyhow::Result<()> {
    let cred = stream
        .peer_cred()
        .context("failed to read peer credentials")?;
    let (read, mut write) = stream.into_split();
    if cred.uid() != 0 {
        warn!(
            uid = cred.uid(),
            "refused a control connection from a non-root user"
        );
        let resp = Response::err("permission denied: the control socket is root-only");
        write_response(&mut write, &resp).await?;
        return Ok(());
    }
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .context("request timed out")??;
    let resp = if n > MAX_REQUEST_BYTES {
        Response::err(format!("request larger than {MAX_REQUEST_BYTES} bytes"))
    } else {
        match serde_json::from_str::<Request>(line.trim_end()) {
            Err(e) => Response::err(format!("malformed request: {e}")),
            Ok(Request::BlockImport {
                origin,
                count,
                ttl_secs,
                reason,
                force,
                dry_run,
            }) => {
                let header = feeds::ImportHeader {
                    origin,
                    count,
                    ttl_secs,
                    reason,
                    force,
                    dry_run,
                };
                feeds::serve_import(&mut reader, header, Arc::clone(&state)).await
            }
            Ok(Request::PolicyReload) => reload::request(&reload).await,
            Ok(Request::ClusterStatus) => cluster::status(&state).await,
            Ok(Request::Tap { port, src, count }) => {
                return serve_tap(&mut write, &api, port, src.as_deref(), count).await;
            }
            Ok(Request::Events {
                since_secs,
                follow,
                limit,
            }) => {
                return serve_events(&mut write, &log, since_secs, follow, limit).await;
            }
            Ok(Request::Inventory) => match api.state.lock() {
                Ok(st) => Response::ok(serde_json::json!(crate::api::inventory::mark_grpc(
                    st.inventory.list_marked(st.pipeline.graphql_schema()),
                    st.pipeline.proto_schema()
                ))),
                Err(_) => Response::err("inventory lock poisoned"),
            },
            Ok(Request::Status) => {
                let st = Arc::clone(&state);
                let mut resp = tokio::task::spawn_blocking(move || match st.lock() {
                    Ok(mut s) => s.handle(Request::Status),
                    Err(_) => Response::err("agent state lock poisoned"),
                })
                .await?;
                if let (Some(data), Ok(api)) = (resp.data.as_mut(), api.state.lock())
                    && !api.status.api_ports.is_empty()
                {
                    data["sampling"] = serde_json::json!(api.status);
                }
                if let (Some(data), Ok(tls)) = (resp.data.as_mut(), api.tls.lock()) {
                    data["tls"] = serde_json::json!(tls.status);
                }
                resp
            }
            Ok(req) => {
                timing!("ctl_read");
                // Map syscalls are quick; hold the lock off the async threads.
                let state = Arc::clone(&state);
                let resp = tokio::task::spawn_blocking(move || match state.lock() {
                    Ok(mut s) => {
                        timing!("ctl_locked");
                        s.handle(req)
                    }
                    Err(_) => Response::err("agent state lock poisoned"),
                })
                .await?;
                write_response(&mut write, &resp).await?;
                timing!("ctl_replied");
                return Ok(());
            }
        }
    };
    write_response(&mut write, &resp).await
}

/// Streams parsed API exchanges as JSON lines until the client goes away or
/// `count` have been sent.
async fn serve_tap(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    api: &api::ApiHandle,
    port: Option<u16>,
    src: Option<&str>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let src = match src.map(crate::net::parse_net).transpose() {
        Ok(s) => s,
        Err(e) => return write_response(write, &Response::err(e.to_string())).await,
    };
    let mut rx = api.tap.subscribe();
    // First line: the stream is on (the CLI reports errors otherwise).
    write_line(
        write,
        &Response::ok(serde_json::json!({ "tap": "started" })),
    )
    .await?;
    let mut sent = 0u64;
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(skipped = n, "tap reader too slow");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        if port.is_some_and(|p| p != ev.port) || src.is_some_and(|n| !n.contains(&ev.client)) {
            continue;
        }
        // `time` (Unix seconds, as it always was) plus `at`, the RFC 3339
        // form every other JSON output uses.
        let mut v = serde_json::to_value(&*ev)?;
        v["at"] = serde_json::json!(crate::clock::rfc3339_ms(ev.time));
        let mut line = serde_json::to_vec(&v)?;
        line.push(b'\n');
        if write.write_all(&line).await.is_err() {
            return Ok(());
        }
        sent += 1;
        if count.is_some_and(|c| sent >= c) {
            return Ok(());
        }
    }
}

/// Past events (from the file, rotated ones included), then, with
/// `follow`, new ones as they are written.
async fn serve_events(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    log: &Arc<Mutex<EventLog>>,
    since_secs: Option<u64>,
    follow: bool,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let opened = log
        .lock()
        .map(|l| (l.path().to_owned(), l.keep(), follow.then(|| l.subscribe())))
        .ok();
    let Some((path, keep, rx)) = opened else {
        return write_response(write, &Response::err("event log lock poisoned")).await;
    };
    write_line(
        write,
        &Response::ok(serde_json::json!({ "events": "started" })),
    )
    .await?;
    let since = since_secs.map_or(0, |s| crate::events::since_ms(Duration::from_secs(s)));
    let limit = limit.unwrap_or(usize::MAX);
    // Skip the history entirely when only new events are wanted.
    if since_secs.is_some() || !follow {
        let past = tokio::task::spawn_blocking(move || {
            crate::events::read_since(&path, keep, since, limit)
        })
        .await?;
        for mut line in past {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                return Ok(());
            }
        }
    }
    let Some(mut rx) = rx else {
        write.shutdown().await?;
        return Ok(());
    };
    loop {
        match rx.recv().await {
            Ok(line) => {
                if write.write_all(line.as_bytes()).await.is_err() {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(skipped = n, "events reader too slow");
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

async fn write_line(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) -> anyhow::Result<()> {
    let mut buf = serde_json::to_vec(resp)?;
    buf.push(b'\n');
    w.write_all(&buf).await?;
    Ok(())
}

async fn write_response(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) -> anyhow::Result<()> {
    let mut buf = serde_json::to_vec(resp)?;
    buf.push(b'\n');
    w.write_all(&buf).await?;
    w.shutdown().await?;
    Ok(())
}

/// Creates `dir` (0700) or makes an existing one private: owned by another
/// user is refused (they could swap the files under it), group or other
/// access is removed.
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("failed to create {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("failed to inspect {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "refusing to use {}: it is owned by uid {}, not by the agent (uid {me}); \
             whoever owns it can replace the agent's files",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("failed to make {} private (0700)", dir.display()))?;
        warn!(dir = %dir.display(), "tightened the directory's permissions to 0700");
    }
    Ok(())
}

/// The control socket's directory: created 0700 when missing; an existing
/// one must belong to root (or the agent's user) and be writable by no one
/// else, or another user could replace the socket and answer the CLI (an
/// empty, non-sticky one of ours is tightened instead).
fn check_socket_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    if !dir.exists() {
        return make_private_dir(dir);
    }
    let meta =
        std::fs::metadata(dir).with_context(|| format!("failed to inspect {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        bail!(
            "refusing to put the control socket in {}: it is owned by uid {}; use a directory \
             owned by root, e.g. /run/tollgate",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        // A fresh volume made for the socket (a Kubernetes emptyDir is 0777):
        // ours and empty, so nothing can have been planted in it yet;
        // tighten it. A shared directory (sticky, like /tmp) or one with
        // contents is refused.
        let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
        if meta.mode() & 0o1000 == 0 && empty {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("failed to make {} private (0700)", dir.display()))?;
            warn!(dir = %dir.display(), "the control socket's directory was writable by others: tightened it to 0700");
            return Ok(());
        }
        bail!(
            "refusing to put the control socket in {}: it is writable by group or others \
             (mode {:o}), who could replace the socket; use a private directory, e.g. \
             /run/tollgate",
            dir.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// One agent per state directory: an exclusive lock held for the process
/// lifetime, released by the kernel even on SIGKILL.
fn take_lock(state_dir: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = state_dir.join("agent.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("failed to restrict {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another tollgate agent is already running with this state directory (it holds {}); \
             stop it before starting a new one",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("failed to lock {}", path.display()))
        }
    }
}

/// Binds the control socket: directory 0700, socket 0600, root-only.
fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_socket_dir(dir)?;
    }
    // A socket left by a crashed agent (no one answered above) is replaced;
    // anything else at the path is not ours to delete.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("failed to remove stale socket {}", path.display()))?,
        Ok(_) => bail!(
            "refusing to replace {}: it exists and is not a socket; remove it yourself or \
             choose another --socket path",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("failed to inspect {}", path.display()));
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("failed to bind control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("failed to restrict {}", path.display()))?;
    Ok(listener)
}
