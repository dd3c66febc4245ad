//! What differs between the two ingress hooks, XDP and TC: how packet bytes
//! are copied out, the packet's length and interface, and the tail-call
//! table (a table holds programs of one type only). Everything else, the
//! decision, the proxy judge and the sampler, is written once over [`Hook`].

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    maps::ProgramArray,
    programs::{TcContext, XdpContext},
};

use crate::maps::{TG_JUMP, TG_JUMP_TC};

pub trait Hook: EbpfContext {
    /// The directly readable bytes `[start, end)` (for TC, the linear part,
    /// which holds the headers).
    fn bounds(&self) -> (usize, usize);
    /// Copies `len` bytes at packet offset `off` to `dst`; false when the
    /// packet is shorter. `dst` must have room for `len` bytes and the
    /// caller keeps `len`'s bound visible to the verifier.
    fn load(&self, off: usize, dst: *mut u8, len: u32) -> bool;
    /// The packet's length, all of it.
    fn wire_len(&self) -> usize;
    /// The interface the packet arrived on.
    fn ifindex(&self) -> u32;
    /// This hook's tail-call table.
    fn jumps() -> &'static ProgramArray;
}

impl Hook for XdpContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn load(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the caller vouches for `dst`; the helper checks the packet.
        unsafe { bpf_xdp_load_bytes(self.ctx, off as u32, dst.cast(), len) == 0 }
    }

    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading a field of the context.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn jumps() -> &'static ProgramArray {
        &TG_JUMP
    }
}

impl Hook for TcContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn load(&self, off: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as for XDP; this helper also reads non-linear data.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), off as u32, dst.cast(), len) == 0 }
    }

    #[inline(always)]
    fn wire_len(&self) -> usize {
        // SAFETY: reading a field of the context.
        unsafe { (*self.skb.skb).len as usize }
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading a field of the context.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn jumps() -> &'static ProgramArray {
        &TG_JUMP_TC
    }
}
