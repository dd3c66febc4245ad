//! Tollgate's agent and CLI, in layers: a module imports only from its own
//! layer or the ones below it (docs/architecture.md, "Layers").
//!
//! 1. Helpers: [`net`], [`clock`], `table`; `text` (untrusted text made safe
//!    for terminals).
//! 2. Models: [`policy`] (the YAML policy file and every section of it),
//!    [`limits`] (rate limits), `feed` (block-list parsing), `crowdsec`
//!    (CrowdSec Local API decisions), [`api`] (sampled traffic made into
//!    HTTP exchanges), `proto` (the control-socket protocol and the checks
//!    of request values).
//! 3. Engines and stores: [`engine`] (detectors and per-client scoring),
//!    `events` (the security event log), [`store`] (durable state behind
//!    [`store::Store`]), [`datapath`] (the embedded eBPF object and typed
//!    access to its maps), `verify` (which sampled requests may ban),
//!    `metrics`, `client` (the CLI's side of the socket).
//! 4. [`agent`]: attach, restore, serve, expire; the single writer of maps
//!    and store. `tls`: HTTPS plaintext from uprobes on the servers' TLS
//!    library (discovery and attachment run with the agent).
//! 5. [`cli`]: the command line; its client commands know only `proto`
//!    (through `client`); `tollgate agent` starts the agent and `tollgate
//!    detect` runs the engine offline.
//!
//! Public modules are the ones the root-only tests, the benchmarks and the
//! fuzz targets use; the rest are private.

/// A timing point on the way of a ban to the fleet: a debug event under
/// the target `tollgate::timing`, stamped `us` with the boot clock in
/// microseconds (one clock for every process of the machine: `cargo xtask
/// bench fleet` lines up the CLI's, the deciding agent's and the enforcing
/// agent's points with its own). Off unless `TOLLGATE_LOG` asks for it;
/// the fields are not even evaluated then.
macro_rules! timing {
    ($name:literal) => {
        tracing::debug!(target: "tollgate::timing", us = $crate::clock::boot_ns() / 1000, $name)
    };
    ($name:literal, $($f:tt)+) => {
        tracing::debug!(target: "tollgate::timing", us = $crate::clock::boot_ns() / 1000, $($f)+, $name)
    };
}

pub mod agent;
/// Seeing the API traffic (its own crate, so the fuzz targets and offline
/// tools need neither the kernel side nor the agent's runtime).
pub use tollgate_api as api;
pub mod cli;
mod client;
pub mod clock;
mod cluster;
mod crowdsec;
pub mod datapath;
pub mod engine;
mod events;
mod feed;
pub mod grpc;
pub mod limits;
mod metrics;
pub mod net;
pub mod netmap;
pub mod policy;
mod proto;
pub mod store;
mod table;
mod text;
mod tls;
mod verify;
