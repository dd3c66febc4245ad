//! TLS plaintext from the server's own TLS library: uprobes on OpenSSL's
//! `SSL_read`/`SSL_read_ex` (requests) and `SSL_write`/`SSL_write_ex`
//! (responses). The entry probes remember the call per thread; the return
//! probe copies what the call actually read or wrote (a write refused with
//! `SSL_ERROR_WANT_WRITE` is retried with the same bytes, so copying at
//! entry would duplicate them) into the sample ring buffer, in the same
//! 1 KiB records as the socket stream, numbered by stream offset.
//!
//! The connection: a read/write system call the thread makes inside the
//! call names its file descriptor (tracepoints, as kprobes are not
//! available everywhere); a call served from the library's buffer uses the
//! descriptor last seen with its `SSL *`. The agent resolves (process,
//! descriptor) to the TCP connection and keeps only API sockets. Each new
//! stream is announced on a ring of its own that the agent reads at once
//! (the data waits in the sample ring to be read in batches).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_boot_ns,
        bpf_probe_read_user,
    },
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use tollgate_common::{
    DIR_REQUEST, DIR_RESPONSE, FlowKey, SAMPLE_BYTES, SampleHeader, TlsCall, TlsSslKey, TlsStream,
    TlsStreamKey, sample_source, tls_stat, tls_stream_id,
};

use crate::maps::{
    TG_SAMPLES, TG_TLS_CALLS, TG_TLS_IDS, TG_TLS_NEW, TG_TLS_OFF, TG_TLS_PROCS, TG_TLS_SSLFD,
    TG_TLS_STATS, TG_TSCRATCH,
};

/// Records copied from one call, as for one socket buffer in `stream.rs`:
/// the rest is counted lost and shows as a gap.
const MAX_CHUNKS: u32 = 16;
const HEADER_BYTES: usize = core::mem::size_of::<SampleHeader>();
/// Offset of the first argument in a syscall tracepoint's record (after the
/// common fields and the syscall number), stable across kernels.
const SYSCALL_ARG0: usize = 16;

#[inline(always)]
fn stat(i: u32, n: u64) {
    if let Some(c) = TG_TLS_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot.
        unsafe { *c += n };
    }
}

/// A new stream's id: this CPU's count of streams and the CPU, so no two
/// streams share one until a CPU has started 2^22 (the agent forgets a
/// stream's resolution well before any CPU could: see `tls/mod.rs`). A
/// clock's low bits, as before, repeat every few seconds, and a repeat on a
/// reused descriptor would hand one client's stream to another.
#[inline(always)]
fn new_id() -> u32 {
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    match TG_TLS_IDS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the program is not migrated while it
        // runs. (Preempted between the read and the write, on a preemptible
        // kernel, it could give one id to two streams opened at that moment:
        // on two open descriptors, which the agent keys apart.)
        Some(seq) => unsafe {
            let s = *seq;
            *seq = s.wrapping_add(1);
            tls_stream_id(cpu, s)
        },
        // Unreachable (an array of one); still a valid, nonzero id.
        None => tls_stream_id(cpu, 0),
    }
}

#[inline(always)]
fn enter(ctx: &ProbeContext, direction: u32, ex: bool) {
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let count_ptr = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let call = TlsCall {
        ssl,
        buf,
        count_ptr,
        fd: -1,
        direction,
    };
    // A full table (threads stuck in calls) only loses this call.
    let _ = TG_TLS_CALLS.insert(&bpf_get_current_pid_tgid(), &call, 0);
}

#[uprobe]
pub fn tollgate_tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, u32::from(DIR_REQUEST), false);
    0
}

#[uprobe]
pub fn tollgate_tls_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, u32::from(DIR_REQUEST), true);
    0
}

#[uprobe]
pub fn tollgate_tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, u32::from(DIR_RESPONSE), false);
    0
}

#[uprobe]
pub fn tollgate_tls_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, u32::from(DIR_RESPONSE), true);
    0
}

/// On `sys_enter_{read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg}`:
/// inside a TLS call, the descriptor the library reads or writes.
#[tracepoint]
pub fn tollgate_tls_fd(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if let Some(call) = TG_TLS_CALLS.get_ptr_mut(&id) {
        // SAFETY: reading the tracepoint's own record.
        if let Ok(fd) = unsafe { ctx.read_at::<u64>(SYSCALL_ARG0) } {
            // SAFETY: map value pointer of this thread's call.
            unsafe {
                if (*call).fd < 0 {
                    (*call).fd = fd as i32;
                }
            }
        }
    }
    0
}

/// On `sys_enter_close`: the descriptor's next connection is a new stream
/// (offsets from 0, a new id).
#[tracepoint]
pub fn tollgate_tls_close(ctx: TracePointContext) -> u32 {
    // SAFETY: reading the tracepoint's own record.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(SYSCALL_ARG0) }) else {
        return 0;
    };
    let key = TlsStreamKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: fd as i32,
    };
    // Most closes are of descriptors never probed: the delete fails cheaply.
    let _ = TG_TLS_OFF.remove(&key);
    0
}

/// On `sys_enter_dup2`/`sys_enter_dup3`: `newfd` is closed and reused in one
/// step, without `close`; its stream ends as at `close` (the agent's proof
/// that a socket is a stream's relies on every stream ending before its
/// descriptor is reused).
#[tracepoint]
pub fn tollgate_tls_dup(ctx: TracePointContext) -> u32 {
    // SAFETY: reading the tracepoint's own record (oldfd, newfd).
    let (Ok(old), Ok(new)) = (unsafe { ctx.read_at::<u64>(SYSCALL_ARG0) }, unsafe {
        ctx.read_at::<u64>(SYSCALL_ARG0 + 8)
    }) else {
        return 0;
    };
    // dup2(fd, fd) changes nothing (dup3 refuses it).
    if old == new {
        return 0;
    }
    let key = TlsStreamKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: new as i32,
    };
    let _ = TG_TLS_OFF.remove(&key);
    0
}

/// On `sys_exit_accept`/`sys_exit_accept4` of a process that made TLS
/// calls: starts the new descriptor's stream and announces it (a record
/// without payload, see [`announce`]), so the agent resolves the connection
/// while the TLS handshake runs.
#[tracepoint]
pub fn tollgate_tls_accept(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a plain value read.
    if unsafe { TG_TLS_PROCS.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: reading the tracepoint's own record (`ret` at the first
    // argument's offset).
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(SYSCALL_ARG0) }) else {
        return 0;
    };
    if ret < 0 || ret > i64::from(i32::MAX) {
        return 0;
    }
    let fd = ret as i32;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let id = new_id();
    let st = TlsStream {
        offsets: [0, 0],
        id,
        reserved: 0,
    };
    let _ = TG_TLS_OFF.insert(&TlsStreamKey { tgid, fd }, &st, 0);
    announce(tgid, fd, id, now);
    0
}

/// Announces stream `id` of the process's descriptor on its own ring
/// (`TG_TLS_NEW`), which the agent reads at once while it holds the sample
/// ring's records back to read many per wake-up: it resolves the
/// descriptor's connection while it is surely open, before the stream's
/// data (and maybe its close) comes out of the sample ring. A full ring
/// loses only the earliness (counted: the agent then reads samples without
/// holding them back, and the data resolves when it is read).
#[inline(always)]
fn announce(tgid: u32, fd: i32, id: u32, now: u64) {
    let h = SampleHeader {
        ts_ns: now,
        flow: FlowKey::default(),
        direction: DIR_REQUEST,
        tcp_flags: 0,
        family: 0,
        source: sample_source::TLS,
        seq: 0,
        ifindex: fd as u32,
        payload_len: 0,
        captured: 0,
        cookie: u64::from(tgid) | (u64::from(id) << 32),
    };
    if TG_TLS_NEW.output::<SampleHeader>(&h, 0).is_err() {
        stat(tls_stat::NEW_LOST, 1);
    }
}

#[uretprobe]
pub fn tollgate_tls_return(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: copied out of the map before the entry is removed.
    let Some(call) = (unsafe { TG_TLS_CALLS.get(&id) }).copied() else {
        return 0;
    };
    let _ = TG_TLS_CALLS.remove(&id);
    let ret: i64 = ctx.ret::<i64>();
    // SSL_read/SSL_write return an int: the byte count, or <= 0.
    let ret = i64::from(ret as i32);
    let len: u64 = if call.count_ptr == 0 {
        if ret <= 0 {
            return 0;
        }
        ret as u64
    } else {
        if ret != 1 {
            return 0;
        }
        // SAFETY: a user pointer the library just wrote the count through.
        match unsafe { bpf_probe_read_user(call.count_ptr as *const u64) } {
            Ok(n) if n > 0 => n,
            _ => return 0,
        }
    };
    stat(tls_stat::CALLS, 1);
    let tgid = (id >> 32) as u32;
    // SAFETY: a plain value read.
    if unsafe { TG_TLS_PROCS.get(&tgid) }.is_none() {
        let _ = TG_TLS_PROCS.insert(&tgid, &1, 0);
    }
    let ssl_key = TlsSslKey {
        tgid,
        reserved: 0,
        ssl: call.ssl,
    };
    let fd = if call.fd >= 0 {
        let _ = TG_TLS_SSLFD.insert(&ssl_key, &call.fd, 0);
        call.fd
    } else {
        // SAFETY: a plain value read.
        match unsafe { TG_TLS_SSLFD.get(&ssl_key) } {
            Some(fd) => *fd,
            None => {
                stat(tls_stat::NO_FD, 1);
                return 0;
            }
        }
    };
    capture(tgid, fd, call.direction, call.buf, len);
    0
}

#[inline(always)]
fn capture(tgid: u32, fd: i32, direction: u32, buf: u64, len: u64) {
    let key = TlsStreamKey { tgid, fd };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let resp = direction == u32::from(DIR_RESPONSE);
    let (base, id) = match TG_TLS_OFF.get_ptr_mut(&key) {
        // SAFETY: map value pointer; a descriptor's calls are serialised by
        // the library's own locking.
        Some(st) => unsafe {
            let off = if resp {
                &raw mut (*st).offsets[1]
            } else {
                &raw mut (*st).offsets[0]
            };
            let b = *off;
            *off = b + len;
            (b, (*st).id)
        },
        None => {
            let id = new_id();
            let st = TlsStream {
                offsets: if resp { [0, len] } else { [len, 0] },
                id,
                reserved: 0,
            };
            let _ = TG_TLS_OFF.insert(&key, &st, 0);
            // A stream whose accept was not seen (open before the agent,
            // or accepted before its process was known): announced from
            // inside this call, its descriptor in use.
            announce(tgid, fd, id, now);
            (0, id)
        }
    };
    let mut done: u64 = 0;
    for _ in 0..MAX_CHUNKS {
        if done >= len {
            return;
        }
        let rest = len - done;
        let n = if rest < SAMPLE_BYTES as u64 {
            rest as u32
        } else {
            SAMPLE_BYTES as u32
        };
        let Some(rec) = TG_TSCRATCH.get_ptr_mut(0) else {
            break;
        };
        // SAFETY: `rec` points at this CPU's scratch record.
        unsafe {
            let h = &raw mut (*rec).header;
            (*h).ts_ns = now;
            (*h).flow = FlowKey::default();
            (*h).direction = direction as u8;
            (*h).tcp_flags = 0;
            (*h).family = 0;
            (*h).source = sample_source::TLS;
            (*h).seq = (base + done) as u32;
            (*h).ifindex = fd as u32;
            (*h).payload_len = n;
            (*h).captured = n;
            (*h).cookie = u64::from(tgid) | (u64::from(id) << 32);
        }
        // Keep the copy length's range (1..=1024) visible to the verifier.
        let n = (n.wrapping_sub(1) & 0x3ff) + 1;
        // SAFETY: `data` has SAMPLE_BYTES writable bytes; `n` is within
        // them; the source is the caller's buffer, read as user memory.
        let ok = unsafe {
            let data = (&raw mut (*rec).data).cast::<u8>();
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                data.cast(),
                n,
                (buf + done) as *const core::ffi::c_void,
            ) == 0
        };
        if !ok {
            break;
        }
        let total = HEADER_BYTES + n as usize;
        // SAFETY: `rec` holds HEADER_BYTES + SAMPLE_BYTES bytes; `total` is
        // at most that.
        let bytes = unsafe { core::slice::from_raw_parts(rec.cast::<u8>(), total) };
        if TG_SAMPLES.output::<[u8]>(bytes, 0).is_err() {
            // Ring full: the agent sees a gap in the offsets.
            break;
        }
        stat(tls_stat::BYTES, u64::from(n));
        done += u64::from(n);
    }
    if done < len {
        stat(tls_stat::LOST, len - done);
    }
}
