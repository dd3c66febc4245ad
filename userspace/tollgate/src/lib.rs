//! Tollgate's agent and CLI.
//!
//! - [`cli`]: the command line (agent and client in one binary).
//! - [`agent`]: the long-running agent: attach, restore, serve, expire. Its
//!   decisions reach the kernel through [`agent::maps::Maps`] (the
//!   [`datapath`], or in memory for unit tests without root).
//! - [`datapath`]: the embedded eBPF object and typed access to its maps.
//! - [`store`]: durable state behind the [`store::Store`] interface.
//! - [`proto`]: the control-socket protocol; [`client`]: its CLI side.
//! - [`policy`]: the YAML policy file; [`limits`]: rate limits.
//! - [`engine`]: detectors and per-client scoring; [`events`]: the security event log.
//! - [`feed`]: block-list feed parsing (FireHOL, Spamhaus DROP style lists).
//! - [`crowdsec`]: CrowdSec Local API decisions (the bouncer's parsing side).
//! - [`metrics`]: Prometheus/OpenMetrics rendering of the agent's state.
//! - [`api`]: sampled API traffic made into HTTP exchanges (reassembly,
//!   inventory, PROXY headers); [`verify`]: which sampled requests may ban.
//! - [`api_cli`]: `tap` and `inventory`; [`detect_cli`]: `detect`, `events`
//!   and `policy check`.
//! - [`tls`]: HTTPS plaintext from uprobes on the servers' TLS library.
//! - [`net`], [`clock`], [`table`]: small helpers; [`text`]: untrusted text made
//!   safe for terminals.

pub mod agent;
pub mod api;
pub mod api_cli;
pub mod cli;
pub mod client;
pub mod clock;
pub mod crowdsec;
pub mod datapath;
pub mod detect_cli;
pub mod engine;
pub mod events;
pub mod feed;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proto;
pub mod store;
pub mod table;
pub mod text;
pub mod tls;
pub mod verify;
