//! Seeing the API traffic: sampled payloads become parsed HTTP exchanges.
//!
//! - [`sample`]: the sample record, independent of where it came from (XDP/TC
//!   today; TLS uprobes later produce the same record).
//! - HTTP/1.x parsing is `tollgate_detect::http`'s, the one `tollgate detect`
//!   uses offline, so that live and offline see the same requests.
//! - [`flows`]: per-flow reassembly of what was sampled, pairing responses
//!   with requests, bounded memory.
//! - [`inventory`]: endpoints seen (method + path template) and their stats.
//! - [`proxyproto`]: the PROXY protocol header load balancers send first.

pub mod flows;
pub mod inventory;
pub mod proxyproto;
pub mod sample;
