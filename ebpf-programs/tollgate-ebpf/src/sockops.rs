//! sock_ops on the root cgroup: counts established server-side connections
//! per client (and limit class), for the XDP program's concurrent-connection
//! cap, and records which connections and sources the kernel itself accepted
//! (a completed handshake): the agent bans only on those, so a spoofed
//! segment, which never gets here, cannot ban its forged source. A connection is counted when it becomes established and uncounted
//! when it leaves ESTABLISHED for any reason (FIN, RST, timeout), so counts
//! cannot leak; only connections this program counted get the state
//! callback that uncounts them.

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_ESTABLISHED,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use tollgate_common::{Config, Established, FLOW_STREAMED, FlowKey, FlowState, config_flags};

use crate::{
    atomic_add,
    limit::key_of,
    maps::{
        TG_API_PORTS, TG_CONFIG, TG_CONNS, TG_ESTAB, TG_FLOWS, TG_HSHAKE, TG_LIMITS, TG_SOCKS,
        TG_STREAM_OFF,
    },
    parse::{AF_INET, AF_INET6, Source, ctx_ip6},
};

#[sock_ops]
pub fn tollgate_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        let Some(src) = remote(&ctx) else {
            return 1;
        };
        let config = TG_CONFIG.get(0).copied().unwrap_or(Config::default());
        let key = key_of(&src, &config.v6_limit_mask, class(&ctx));
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        let _ = TG_HSHAKE.insert(&key.addr, &now, 0);
        let flow = FlowKey {
            client: src.mapped(),
            server: local(&ctx),
            client_port: u32::from_be(ctx.remote_port()) as u16,
            server_port: ctx.local_port() as u16,
        };
        // SAFETY: `ops` is the program's context pointer; a 4-byte field.
        let isn = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).rcv_nxt) };
        let est = Established {
            since_ns: now,
            isn,
            acked: isn,
            acked_ns: 0,
        };
        let _ = TG_ESTAB.insert(&flow, &est, 0);
        if config.flags & config_flags::STREAM != 0
            && matches!(TG_API_PORTS.get(ctx.local_port() & 0xffff), Some(v) if *v != 0)
        {
            // Requests on this connection are taken at the socket from now
            // on; the XDP sampler leaves its request packets alone.
            let _ = TG_STREAM_OFF.insert(&flow, &0, 0);
            // SAFETY: `ops` is the program's context pointer.
            let ops = unsafe { &mut *ctx.ops };
            if TG_SOCKS.update(flow, ops, 0).is_ok() {
                let _ = TG_FLOWS.insert(
                    &flow,
                    &FlowState {
                        packets: FLOW_STREAMED,
                    },
                    0,
                );
            }
        }
        let _ = TG_CONNS.insert(&key, &0, u64::from(BPF_NOEXIST));
        if let Some(n) = TG_CONNS.get_ptr_mut(&key) {
            atomic_add(n, 1);
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
    } else if op == BPF_SOCK_OPS_STATE_CB
        && ctx.arg(0) == BPF_TCP_ESTABLISHED
        && ctx.arg(1) != BPF_TCP_ESTABLISHED
        && let Some(key) = key(&ctx)
        && let Some(n) = TG_CONNS.get_ptr_mut(&key)
    {
        // Adding 2^64 - 1 subtracts one.
        atomic_add(n, u64::MAX);
    }
    1
}

#[inline(always)]
fn key(ctx: &SockOpsContext) -> Option<tollgate_common::BucketKey> {
    let config = TG_CONFIG.get(0).copied().unwrap_or(Config::default());
    let src = remote(ctx)?;
    Some(key_of(&src, &config.v6_limit_mask, class(ctx)))
}

#[inline(always)]
fn class(ctx: &SockOpsContext) -> u32 {
    let port = ctx.local_port();
    TG_LIMITS.get(port & 0xffff).map_or(0, |c| c.class)
}

/// The server's own address, in the flow key's form.
#[inline(always)]
fn local(ctx: &SockOpsContext) -> [u8; 16] {
    match ctx.family() {
        AF_INET => Source::V4(ctx.local_ip4().to_ne_bytes()).mapped(),
        // SAFETY: `ops` is the program's context pointer; an address field.
        _ => unsafe { ctx_ip6(&raw const (*ctx.ops).local_ip6) },
    }
}

/// The client, as the datapath names sources.
#[inline(always)]
fn remote(ctx: &SockOpsContext) -> Option<Source> {
    let src = match ctx.family() {
        AF_INET => Source::V4(ctx.remote_ip4().to_ne_bytes()),
        // IPv4 clients of a dual-stack socket are IPv4 clients.
        // SAFETY: `ops` is the program's context pointer; an address field.
        AF_INET6 => Source::from_mapped(&unsafe { ctx_ip6(&raw const (*ctx.ops).remote_ip6) }),
        _ => return None,
    };
    Some(src)
}
