//! Seeing the API traffic: sampled payloads become parsed HTTP exchanges.
//!
//! - [`sample`]: the sample record, independent of where it came from (XDP/TC
//!   today; TLS uprobes later produce the same record).
//! - [`http`]: bounded HTTP/1.x request and response parsing.
//! - [`flows`]: per-flow reassembly of what was sampled, pairing responses
//!   with requests, bounded memory.
//! - [`inventory`]: endpoints seen (method + path template) and their stats.
//! - [`proxyproto`]: the PROXY protocol header load balancers send first.

pub mod flows;
pub mod http;
pub mod inventory;
pub mod proxyproto;
pub mod sample;
