//! A pre-pass over HPACK header blocks (RFC 7541) that turns every
//! Huffman-coded string into a raw literal before `loona-hpack` sees the
//! block.
//!
//! Why: `loona-hpack` decodes Huffman strings bit by bit through hash maps
//! it rebuilds for every string: a 15-byte string cost ~45 µs, and a 63 KB
//! block of 21,000 one-byte Huffman fields cost 0.6 s of agent CPU, which a
//! client could repeat on every request (blocks are decoded whole, up to
//! 256 KiB, to keep the table in step). Here the code is decoded four bits
//! at a time through a table built once, and `loona-hpack` keeps what it
//! does well: the representations, the dynamic table and its bounds.
//!
//! The rewritten block means exactly what the original did: the same
//! fields in the same order, the same table insertions, the same outcome.
//! A block that is malformed is rewritten up to and including the part that
//! fails, with that part reduced to a few bytes that fail the same way
//! (a bad Huffman string becomes a tiny one with the same fault, a length
//! running past the block keeps only its length), so `loona-hpack` reports
//! the very error it would have reported, after the same fields.
//!
//! The rewrite is linear and bounded: each Huffman string of `n` bytes
//! decodes to at most `8n/5` bytes (no symbol is shorter than 5 bits), so
//! the rewritten block is at most twice the original.

use std::{borrow::Cow, cell::RefCell, sync::LazyLock};

use loona_hpack::decoder::DecoderError;

/// Blocks past this are handed to `loona-hpack` unchanged: a raw length
/// `loona-hpack` reads is at most about 2^28, which a Huffman string this
/// short cannot decode past. Far above any block the agent decodes.
const MAX_REWRITE: usize = 64 << 20;

/// Scratch capacity kept between blocks: bigger ones are let go after use.
const KEEP_SCRATCH: usize = 128 << 10;

thread_local! {
    /// The rewritten block and one decoded string, reused across blocks.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `loona_hpack::Decoder::decode_with_cb` on `block`, with Huffman strings
/// decoded here first: the same fields, table changes and result.
pub(crate) fn decode_with_cb(
    hpack: &mut loona_hpack::Decoder<'static>,
    block: &[u8],
    cb: impl FnMut(Cow<[u8]>, Cow<[u8]>),
) -> Result<(), DecoderError> {
    if block.len() > MAX_REWRITE {
        return hpack.decode_with_cb(block, cb);
    }
    SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            // Only reachable if a callback decoded another block from
            // inside this one: correct, just without the pre-pass.
            return hpack.decode_with_cb(block, cb);
        };
        let (out, string) = &mut *scratch;
        rewrite(block, out, string);
        let res = hpack.decode_with_cb(out, cb);
        for buf in [out, string] {
            buf.clear();
            buf.shrink_to(KEEP_SCRATCH);
        }
        res
    })
}

/// Writes `block` into `out` with every Huffman string as a raw literal.
/// At the first malformed part, writes a short stand-in that fails the same
/// way in `loona-hpack` and stops.
fn rewrite(block: &[u8], out: &mut Vec<u8>, string: &mut Vec<u8>) {
    out.clear();
    let mut pos = 0;
    while let Some(rest) = block.get(pos..).filter(|r| !r.is_empty()) {
        // RFC 7541 §6: the leading bits name the representation and the
        // prefix of its integer; literals (§6.2) carry strings after it.
        let (prefix, literal) = match rest[0] {
            b if b & 0x80 != 0 => (7, false), // §6.1 indexed
            b if b & 0x40 != 0 => (6, true),  // §6.2.1 with incremental indexing
            b if b & 0x20 != 0 => (5, false), // §6.3 dynamic table size update
            _ => (4, true),                   // §6.2.2 without / §6.2.3 never indexed
        };
        let Ok((index, used)) = integer(rest, prefix) else {
            out.extend_from_slice(&rest[..rest.len().min(MAX_INT_OCTETS)]);
            return;
        };
        out.extend_from_slice(&rest[..used]);
        pos += used;
        if literal {
            // A literal name (index 0) comes before the value.
            for _ in 0..if index == 0 { 2 } else { 1 } {
                match literal_string(&block[pos..], out, string) {
                    Some(used) => pos += used,
                    None => return,
                }
            }
        }
    }
}

/// Octets of an integer `loona-hpack` reads before calling it too long.
const MAX_INT_OCTETS: usize = 5;

/// An integer with a `prefix`-bit prefix (RFC 7541 §5.1) as `loona-hpack`
/// reads it: its value and octets, or an error where it errs (no octets
/// left, or more than [`MAX_INT_OCTETS`]).
fn integer(buf: &[u8], prefix: u8) -> Result<(usize, usize), ()> {
    let mask = (1u8 << prefix) - 1;
    let first = buf.first().ok_or(())? & mask;
    if first < mask {
        return Ok((usize::from(first), 1));
    }
    let mut value = usize::from(mask);
    for (i, &b) in buf.iter().enumerate().skip(1) {
        if i >= MAX_INT_OCTETS {
            break;
        }
        // At most four continuation octets: 28 bits, no overflow.
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(())
}

/// Appends `value` as a raw string's length: H bit clear, 7-bit prefix.
fn raw_length(mut value: usize, out: &mut Vec<u8>) {
    if value < 0x7f {
        out.push(value as u8);
        return;
    }
    out.push(0x7f);
    value -= 0x7f;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Copies one string literal (RFC 7541 §5.2) at the start of `buf` into
/// `out`, raw; the octets it took, or `None` (after writing a stand-in
/// that fails alike) when it is malformed.
fn literal_string(buf: &[u8], out: &mut Vec<u8>, string: &mut Vec<u8>) -> Option<usize> {
    let Ok((len, used)) = integer(buf, 7) else {
        out.extend_from_slice(&buf[..buf.len().min(MAX_INT_OCTETS)]);
        return None;
    };
    let Some(data) = buf.get(used..).and_then(|d| d.get(..len)) else {
        // Runs past the block: its length alone fails the same way.
        out.extend_from_slice(&buf[..used]);
        return None;
    };
    if buf[0] & 0x80 == 0 {
        out.extend_from_slice(&buf[..used + len]);
        return Some(used + len);
    }
    string.clear();
    match huffman(data, string) {
        Ok(()) => {
            raw_length(string.len(), out);
            out.extend_from_slice(string);
            Some(used + len)
        }
        Err(e) => {
            out.extend_from_slice(e.stand_in());
            None
        }
    }
}

/// Why a Huffman string is malformed (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HuffmanError {
    /// More than 7 bits left after the last symbol.
    PaddingTooLong,
    /// The bits left are not the start of EOS (all ones).
    PaddingNotEos,
    /// The EOS symbol is inside the string.
    Eos,
}

impl HuffmanError {
    /// A Huffman string literal, length included, that `loona-hpack`
    /// refuses for the same reason.
    fn stand_in(self) -> &'static [u8] {
        match self {
            // Eight ones: the start of longer codes, more than 7 bits.
            Self::PaddingTooLong => &[0x81, 0xff],
            // '0' (00000), then 000 as padding.
            Self::PaddingNotEos => &[0x81, 0x00],
            // Thirty ones: EOS.
            Self::Eos => &[0x84, 0xff, 0xff, 0xff, 0xff],
        }
    }
}

/// What four bits do from one state of the decoder.
#[derive(Debug, Clone, Copy, Default)]
struct Step {
    /// The state after them: a node of the code tree (0 is its root).
    next: u8,
    /// The symbol they completed, if `EMIT`.
    symbol: u8,
    flags: u8,
}

/// The four bits completed a symbol (at most one: none is shorter than 5 bits).
const EMIT: u8 = 1;
/// The four bits completed EOS.
const FAIL: u8 = 2;

/// The Huffman decoder: the code's 256 inner nodes as states.
struct Table {
    steps: [[Step; 16]; 256],
    /// How a string ending in each state ends.
    end: [Result<(), HuffmanError>; 256],
}

/// Built once, from [`CODES`].
static TABLE: LazyLock<Box<Table>> = LazyLock::new(build);

/// Symbol 256 of [`CODES`].
const EOS: u16 = 256;
/// A child that is a leaf (symbol in the low bits), not an inner node.
const LEAF: u16 = 0x8000;

// The code is a constant: what would fail here fails every test.
#[allow(clippy::expect_used)]
fn build() -> Box<Table> {
    // The code tree: inner nodes with their two children; 0 is "none yet"
    // (the root is no one's child).
    let mut children: Vec<[u16; 2]> = vec![[0, 0]];
    // Depth of each inner node, and whether its path is all ones (a
    // string may end there: that is padding).
    let mut depth = vec![0u8];
    let mut ones = vec![true];
    for (symbol, &(code, len)) in (0u16..).zip(CODES.iter()) {
        let mut node = 0usize;
        for bit in (0..len).rev() {
            let b = usize::from(code >> bit & 1 == 1);
            if bit == 0 {
                assert_eq!(children[node][b], 0, "the code is prefix-free");
                children[node][b] = LEAF | symbol;
                break;
            }
            let child = children[node][b];
            if child == 0 {
                let new = u16::try_from(children.len()).expect("256 inner nodes");
                children.push([0, 0]);
                depth.push(depth[node] + 1);
                ones.push(ones[node] && b == 1);
                children[node][b] = new;
                node = usize::from(new);
            } else {
                assert_eq!(child & LEAF, 0, "the code is prefix-free");
                node = usize::from(child);
            }
        }
    }
    assert_eq!(children.len(), 256, "a complete code of 257 symbols");
    let mut table = Box::new(Table {
        steps: [[Step::default(); 16]; 256],
        end: [Ok(()); 256],
    });
    for state in 0..256 {
        for nibble in 0..16u8 {
            let mut node = state;
            let mut step = Step::default();
            for bit in (0..4).rev() {
                let child = children[node][usize::from(nibble >> bit & 1)];
                assert_ne!(child, 0, "the code is complete");
                if child & LEAF == 0 {
                    node = usize::from(child);
                } else if child == LEAF | EOS {
                    step.flags = FAIL;
                    break;
                } else {
                    step.symbol = (child & 0xff) as u8;
                    step.flags = EMIT;
                    node = 0;
                }
            }
            step.next = u8::try_from(node).expect("256 inner nodes");
            table.steps[state][usize::from(nibble)] = step;
        }
        table.end[state] = if depth[state] > 7 {
            Err(HuffmanError::PaddingTooLong)
        } else if !ones[state] {
            Err(HuffmanError::PaddingNotEos)
        } else {
            Ok(())
        };
    }
    table
}

/// Decodes a Huffman-coded string (RFC 7541 §5.2, Appendix B) onto `out`.
/// On an error `out` holds part of the string.
pub(crate) fn huffman(data: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let table = &**TABLE;
    out.reserve(data.len() * 8 / 5 + 1);
    let mut state = 0u8;
    for &byte in data {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = table.steps[usize::from(state)][usize::from(nibble)];
            if step.flags & FAIL != 0 {
                return Err(HuffmanError::Eos);
            }
            if step.flags & EMIT != 0 {
                out.push(step.symbol);
            }
            state = step.next;
        }
    }
    table.end[usize::from(state)]
}

/// RFC 7541 Appendix B: the code (right-aligned) and its length in bits of
/// octets 0 to 255, then EOS.
#[rustfmt::skip]
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28), (0xfffffe5, 28),
    (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28),
    (0xfffffef, 28), (0xffffff0, 28), (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), (0x3fa, 10), (0x3fb, 10),
    (0xf9, 8), (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6),
    (0x1c, 6), (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13), (0x21, 6),
    (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7),
    (0x69, 7), (0x6a, 7), (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5),
    (0x25, 6), (0x26, 6), (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), (0x2b, 6), (0x76, 7),
    (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14),
    (0x1ffd, 13), (0xffffffc, 28), (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23), (0x3fffd6, 22), (0x7fffda, 23),
    (0x7fffdb, 23), (0x7fffdc, 23), (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23),
    (0x7fffe2, 23), (0x7fffe3, 23), (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24), (0x3fffda, 22), (0x1fffdd, 21),
    (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22),
    (0x7fffeb, 23), (0x7fffec, 23), (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20), (0x3fffe2, 22),
    (0x3fffe3, 22), (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23),
    (0x3fffe8, 22), (0x1ffffec, 25), (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), (0x7fff2, 19), (0x1fffe3, 21),
    (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27),
    (0x7ffffe4, 27), (0x7ffffe5, 27), (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23), (0x3fffea, 22), (0x3fffeb, 22),
    (0x1ffffee, 25), (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27), (0x7ffffe8, 27),
    (0x7ffffe9, 27), (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26), (0x3fffffff, 30),
];

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::decoder::{IntegerDecodingError, StringDecodingError};
    use loona_hpack::huffman::{HuffmanDecoder, HuffmanDecoderError};

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    /// Test-only Huffman encoder from the same code table, padded with ones.
    fn huff(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &c in s {
            let (code, len) = CODES[usize::from(c)];
            acc = acc << len | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            out.push((acc << (8 - bits)) as u8 | (0xff >> bits));
        }
        out
    }

    /// An integer with a `prefix`-bit prefix and `flags` in the first octet.
    fn int(mut v: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
        let mask = (1usize << prefix) - 1;
        if v < mask {
            out.push(flags | v as u8);
            return;
        }
        out.push(flags | mask as u8);
        v -= mask;
        while v >= 0x80 {
            out.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn string(s: &[u8], huffman: bool, out: &mut Vec<u8>) {
        if huffman {
            let h = huff(s);
            int(h.len(), 7, 0x80, out);
            out.extend_from_slice(&h);
        } else {
            int(s.len(), 7, 0, out);
            out.extend_from_slice(s);
        }
    }

    fn decoder() -> loona_hpack::Decoder<'static> {
        let mut d = loona_hpack::Decoder::new();
        d.set_max_allowed_table_size(4096);
        d
    }

    /// Fields and result through the pre-pass.
    fn ours(
        d: &mut loona_hpack::Decoder<'static>,
        block: &[u8],
    ) -> (Fields, Result<(), DecoderError>) {
        let mut f = Vec::new();
        let r = decode_with_cb(d, block, |n, v| f.push((n.into_owned(), v.into_owned())));
        (f, r)
    }

    /// Fields and result through `loona-hpack` alone.
    fn theirs(
        d: &mut loona_hpack::Decoder<'static>,
        block: &[u8],
    ) -> (Fields, Result<(), DecoderError>) {
        let mut f = Vec::new();
        let r = d.decode_with_cb(block, |n, v| f.push((n.into_owned(), v.into_owned())));
        (f, r)
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// xorshift64*: reproducible random tests without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            // Mostly text, sometimes any octet (the long codes).
            let any = self.below(4) == 0;
            (0..n)
                .map(|_| {
                    if any {
                        self.next() as u8
                    } else {
                        b' ' + self.below(95) as u8
                    }
                })
                .collect()
        }
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = decoder();
        let blocks = [
            (
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                ]),
            ),
            (
                "8286 84be 5886 a8eb 1064 9cbf",
                fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                    ("cache-control", "no-cache"),
                ]),
            ),
            (
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                fields(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ]),
            ),
        ];
        for (block, want) in blocks {
            assert_eq!(ours(&mut d, &hex(block)), (want, Ok(())));
        }
    }

    #[test]
    fn rfc7541_c6_responses_with_huffman() {
        let mut d = decoder();
        d.set_max_table_size(256);
        let blocks = [
            (
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
                 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                fields(&[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                    ("location", "https://www.example.com"),
                ]),
            ),
            (
                "4883 640e ffc1 c0bf",
                fields(&[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                    ("location", "https://www.example.com"),
                ]),
            ),
            (
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
                 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
                 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                fields(&[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                    ("location", "https://www.example.com"),
                    ("content-encoding", "gzip"),
                    (
                        "set-cookie",
                        "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                    ),
                ]),
            ),
        ];
        for (block, want) in blocks {
            assert_eq!(ours(&mut d, &hex(block)), (want, Ok(())));
        }
    }

    /// Our Huffman decoder against `loona-hpack`'s on one string.
    fn same_as_loona(loona: &mut HuffmanDecoder, data: &[u8]) {
        let mut out = Vec::new();
        let ours = huffman(data, &mut out).map(|()| out);
        let theirs = loona.decode(data).map_err(|e| match e {
            HuffmanDecoderError::PaddingTooLarge => HuffmanError::PaddingTooLong,
            HuffmanDecoderError::InvalidPadding => HuffmanError::PaddingNotEos,
            HuffmanDecoderError::EOSInString => HuffmanError::Eos,
            e => panic!("unexpected {e:?}"),
        });
        assert_eq!(ours, theirs, "{data:02x?}");
    }

    #[test]
    fn huffman_decodes_as_loona_does() {
        let mut loona = HuffmanDecoder::new();
        // Every string of one and two octets.
        for a in 0..=255u8 {
            same_as_loona(&mut loona, &[a]);
            for b in 0..=255u8 {
                same_as_loona(&mut loona, &[a, b]);
            }
        }
        // Encoded text, then with bits flipped, cut, or garbage appended.
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let n = rng.below(40);
            let mut data = huff(&rng.bytes(n));
            same_as_loona(&mut loona, &data);
            match rng.below(3) {
                0 if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
                1 => data.truncate(rng.below(data.len() + 1)),
                _ => {
                    let k = rng.below(5);
                    let tail = rng.bytes(k);
                    data.extend(tail);
                }
            }
            same_as_loona(&mut loona, &data);
        }
        // Every symbol alone, and EOS among valid symbols.
        for c in 0..=255u8 {
            same_as_loona(&mut loona, &huff(&[c]));
            let mut eos = huff(b"a");
            eos.extend([0xff, 0xff, 0xff, 0xfc]);
            same_as_loona(&mut loona, &eos);
        }
    }

    /// A random header block of `n` representations: every kind, names
    /// and values raw or Huffman, indices mostly in range.
    fn random_block(rng: &mut Rng, n: usize) -> Vec<u8> {
        let mut b = Vec::new();
        if rng.below(8) == 0 {
            int(rng.below(4097), 5, 0x20, &mut b);
        }
        for _ in 0..n {
            let kind = rng.below(5);
            if kind == 0 {
                int(1 + rng.below(61), 7, 0x80, &mut b);
                continue;
            }
            let (prefix, flags) = match kind {
                1 => (6, 0x40),
                2 => (4, 0x00),
                _ => (4, 0x10),
            };
            let name = if rng.below(2) == 0 {
                0
            } else {
                1 + rng.below(61)
            };
            int(name, prefix, flags, &mut b);
            if name == 0 {
                let len = 1 + rng.below(12);
                let s = rng.bytes(len);
                string(&s, rng.below(4) != 0, &mut b);
            }
            // Now and then a value long enough for multi-octet lengths.
            let len = if rng.below(10) == 0 {
                100 + rng.below(400)
            } else {
                rng.below(30)
            };
            let s = rng.bytes(len);
            string(&s, rng.below(4) != 0, &mut b);
        }
        b
    }

    /// Through a run of blocks on one connection (the table carries over),
    /// intact, cut or with an octet changed: the same fields, table and
    /// result (the exact error) as `loona-hpack` alone.
    #[test]
    fn differential_against_loona_alone() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let (mut errors, mut huffman_fields) = (0, 0);
        for _ in 0..200 {
            let (mut a, mut b) = (decoder(), decoder());
            for _ in 0..20 {
                let n = rng.below(12);
                let mut block = random_block(&mut rng, n);
                match rng.below(6) {
                    0 => block.truncate(rng.below(block.len() + 1)),
                    1 if !block.is_empty() => {
                        let i = rng.below(block.len());
                        block[i] = rng.next() as u8;
                    }
                    _ => {}
                }
                let (mut out, mut s) = (Vec::new(), Vec::new());
                rewrite(&block, &mut out, &mut s);
                assert!(out.len() <= 2 * block.len(), "bounded");
                huffman_fields += usize::from(block.iter().any(|&o| o & 0x80 != 0));
                let got = ours(&mut a, &block);
                assert_eq!(got, theirs(&mut b, &block), "{block:02x?}");
                errors += usize::from(got.1.is_err());
            }
        }
        // The runs exercised both outcomes.
        assert!(
            errors > 100 && huffman_fields > 1000,
            "{errors} {huffman_fields}"
        );
    }

    #[test]
    fn truncated_block_keeps_the_fields_before_the_cut() {
        let mut block = Vec::new();
        // Where each field ends: only there is a cut block whole.
        let mut ends = vec![0];
        for (n, v) in [
            (":method", "POST"),
            (":path", "/api/v1/users?id=7"),
            ("x-token", "abc def"),
        ] {
            block.push(0x00);
            string(n.as_bytes(), true, &mut block);
            string(v.as_bytes(), true, &mut block);
            ends.push(block.len());
        }
        for cut in 0..=block.len() {
            let got = ours(&mut decoder(), &block[..cut]);
            assert_eq!(got, theirs(&mut decoder(), &block[..cut]), "cut at {cut}");
            let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
            assert_eq!(got.0.len(), whole, "cut at {cut}");
            assert_eq!(got.1.is_ok(), ends.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_strings_fail_as_loona_does() {
        use DecoderError::{
            HeaderIndexOutOfBounds as Index, IntegerDecodingError as Int,
            StringDecodingError as Str,
        };
        use StringDecodingError::HuffmanDecoderError as Huff;
        let cases: [(&str, DecoderError); 10] = [
            // '0' then eleven ones: padding past 7 bits.
            (
                "04 82 07ff",
                Str(Huff(HuffmanDecoderError::PaddingTooLarge)),
            ),
            // '0' then 000: padding that is not EOS.
            ("04 81 00", Str(Huff(HuffmanDecoderError::InvalidPadding))),
            // EOS (30 ones) inside the string, symbols after it.
            (
                "04 85 ffff fffc 07",
                Str(Huff(HuffmanDecoderError::EOSInString)),
            ),
            // The same in a literal name.
            (
                "00 85 ffff ffff 07 81 07",
                Str(Huff(HuffmanDecoderError::EOSInString)),
            ),
            // A string length of six octets.
            (
                "04 ff 8080 8080 01",
                Int(IntegerDecodingError::TooManyOctets),
            ),
            // An index of six octets.
            (
                "ff 8080 8080 8000",
                Int(IntegerDecodingError::TooManyOctets),
            ),
            // An integer cut by the end of the block.
            ("04 ff 80", Int(IntegerDecodingError::NotEnoughOctets)),
            // A Huffman string running past the block.
            ("04 85 07", Str(StringDecodingError::NotEnoughOctets)),
            // A name index past the tables comes first, as in loona.
            ("0f 70 81 00", Index),
            // A bad string ends the block: the size update past the
            // allowed size after it is never read.
            (
                "04 81 00 3f e1 ff 03",
                Str(Huff(HuffmanDecoderError::InvalidPadding)),
            ),
        ];
        for (block, want) in cases {
            // A good field first: it is delivered before the error.
            let block = [hex("82"), hex(block)].concat();
            let got = ours(&mut decoder(), &block);
            assert_eq!(got, theirs(&mut decoder(), &block), "{block:02x?}");
            assert_eq!(
                got,
                (fields(&[(":method", "GET")]), Err(want)),
                "{block:02x?}"
            );
        }
    }

    /// 21,000 one-octet Huffman fields (`:path: 0`) in a 63 KB block.
    fn hostile_block() -> Vec<u8> {
        [0x04, 0x81, 0x07].repeat(21_000)
    }

    #[test]
    fn hostile_block_decodes_quickly() {
        let block = hostile_block();
        let mut d = decoder();
        let start = std::time::Instant::now();
        let mut n = 0;
        let res = decode_with_cb(&mut d, &block, |name, value| {
            assert_eq!((&name[..], &value[..]), (&b":path"[..], &b"0"[..]));
            n += 1;
        });
        let took = start.elapsed();
        eprintln!(
            "hostile block ({} bytes, {n} fields): {took:?}",
            block.len()
        );
        assert_eq!((res, n), (Ok(()), 21_000));
        // loona-hpack alone took 0.59 s (release) on this block.
        assert!(took < std::time::Duration::from_millis(200), "{took:?}");
    }

    /// Before/after figures: `cargo test --release -p tollgate-detect
    /// hpack_prepass -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, run by hand in release"]
    fn timing_against_loona_alone() {
        let mut small = hex("82 86 84");
        small.push(0x01);
        string(b"www.example.com", true, &mut small);
        let small_raw = {
            let mut b = hex("82 86 84");
            b.push(0x01);
            string(b"www.example.com", false, &mut b);
            b
        };
        let hostile = hostile_block();
        for (what, block, rounds) in [
            ("15-byte Huffman string", &small, 2000),
            ("same string raw", &small_raw, 2000),
            ("hostile block", &hostile, 5),
        ] {
            let mut d = decoder();
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                ours(&mut d, block).1.unwrap();
            }
            let after = start.elapsed() / rounds;
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                theirs(&mut d, block).1.unwrap();
            }
            let before = start.elapsed() / rounds;
            eprintln!("{what}: loona alone {before:?}, pre-pass + loona {after:?} per block");
        }
    }
}
