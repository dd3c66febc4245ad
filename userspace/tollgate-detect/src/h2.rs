//! HTTP/2 (RFC 9113) streams of one connection direction, decoded into the
//! same [`Request`] and [`Response`] the HTTP/1 parser produces, so every
//! detector and API rule judges them unchanged.
//!
//! A [`Decoder`] follows one direction of a connection from its first byte
//! (the client preface for requests), strictly in order: frames are parsed
//! with bounds (header blocks, CONTINUATION counts, open streams), header
//! blocks go through one HPACK decoder whose dynamic table lives as long as
//! the connection, and each stream's HEADERS (+ CONTINUATION) and DATA become
//! one message. HPACK cannot survive a gap: a header block that was not seen
//! leaves the table out of step, so after missing bytes (outside DATA being
//! passed over) or an HPACK error, later header blocks are reported as
//! [`Message::Unknown`] and never guessed.
//!
//! HPACK is `loona-hpack`: the maintained continuation of the original
//! `hpack` crate (RFC 7541 test vectors, Huffman, table-size updates), which
//! returns errors on malformed blocks rather than panicking, exposes the
//! decoder on its own (the `h2` crate keeps its HPACK module private) and
//! lets us cap the dynamic table a peer may ask for. Its Huffman decoder is
//! not used: it rebuilds hash maps for every string and walks them bit by
//! bit, so a block of many tiny Huffman fields cost a fraction of a second
//! of CPU, repeatable per request. Each block first goes through a pre-pass
//! (`hpack_prepass`) that decodes Huffman strings through a table built
//! once and hands `loona-hpack` the same block with raw literals: the same
//! fields, table changes and errors.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use crate::http::{MAX_HEADER_BYTES, MAX_HEADERS, Request, Response, lossy, split_target};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The `version` of a request or response carried over HTTP/2.
pub const HTTP_2: u8 = 2;
/// Compressed header-block bytes (HEADERS plus CONTINUATION) judged per
/// block, and the largest SETTINGS/RST_STREAM frame buffered. Servers
/// refuse larger blocks (nginx: 16 KiB per field, 64 KiB of fields), yet
/// decode them whole to keep their HPACK table in step (RFC 9113 §4.3). A
/// block past it is decoded whole as well, up to [`MAX_HPACK_BLOCK`], and
/// its fields past the bounds of what is judged are dropped: the message is
/// judged truncated (see [`Counters::blocks_cut`]), the table stays in step.
pub const MAX_HEADER_BLOCK: usize = MAX_HEADER_BYTES;
/// Compressed header-block bytes fed to HPACK per block: a block past it is
/// judged from its first bytes, and the table is then out of step for good
/// (see [`Counters::blocks_lost`]). Four times what a server reads: the
/// memory for one block being collected, per connection.
pub const MAX_HPACK_BLOCK: usize = 4 * MAX_HEADER_BLOCK;
/// CONTINUATION frames per header block kept: a flood of tiny ones costs a
/// server (and us) work per frame for no data; the block is cut there.
pub const MAX_CONTINUATIONS: u32 = 128;
/// Bytes of open header blocks (and their frames being read) held at once
/// by all the decoders sharing one [`Budget`] (by default every decoder of
/// the process, so all of the agent's flows): past it,
/// a header-block frame is cut as one past [`MAX_HPACK_BLOCK`] is, so many
/// connections each holding an unfinished block cannot add up without bound.
/// Bytes are charged as they arrive: holding a share takes sending it.
pub const MAX_BLOCK_BUDGET: usize = 16 << 20;
/// Bytes of open header blocks one [`Source`] may hold at once, over all its
/// connections: four blocks of the largest size decoded. A client that
/// really sends unfinished header blocks on many connections cuts only its
/// own blocks past this; the others keep decoding.
pub const SOURCE_SHARE: usize = 4 * MAX_HPACK_BLOCK;
/// Of [`MAX_BLOCK_BUDGET`], the bytes only a source within its first
/// [`MAX_HEADER_BLOCK`] may take: sources past that (the few that hold big
/// blocks) fill at most the rest, so filling the whole budget takes many
/// sources (12 at their full share, then 64 more at 64 KiB each), and a
/// client sending an ordinary block still finds room.
pub const SOURCE_RESERVE: usize = MAX_BLOCK_BUDGET / 4;
/// Sources holding bytes at once, at most (each entry holds at least one
/// byte on one live decoder): past it, a source not yet holding any gets
/// none, counted as over the budget.
pub const MAX_SOURCES: usize = 65_536;

/// The budget of every decoder made by [`Decoder::new`]: one per agent.
static SHARED_BUDGET: std::sync::LazyLock<Arc<Budget>> = std::sync::LazyLock::new(|| {
    Budget::with_shares(MAX_BLOCK_BUDGET, SOURCE_SHARE, SOURCE_RESERVE)
});

/// Who holds a share of a [`Budget`]: a client as the connection shows it.
/// An IPv4 address is one source; an IPv6 address counts by its /64 (one
/// host or LAN gets a /64, and any address in it is the same source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    /// The source `addr` belongs to (an IPv4-mapped IPv6 address as IPv4).
    #[must_use]
    pub fn of(addr: std::net::IpAddr) -> Self {
        match addr {
            std::net::IpAddr::V4(v) => Self(u128::from(v.to_bits())),
            std::net::IpAddr::V6(v) => match v.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(v4.to_bits())),
                None => Self(v.to_bits() & !u128::from(u64::MAX)),
            },
        }
    }
}

/// Why a [`Budget`] granted less than was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Short {
    /// The source's own share is spent.
    Share,
    /// The budget is spent (or too many sources hold some).
    Budget,
}

/// Bytes of header blocks held by the decoders that share it, in all and
/// per [`Source`].
#[derive(Debug)]
pub struct Budget {
    held: Mutex<Held>,
    limit: usize,
    share: usize,
    reserve: usize,
}

#[derive(Debug, Default)]
struct Held {
    used: usize,
    /// Only sources holding bytes: an entry goes when its bytes come back.
    sources: HashMap<Source, usize>,
}

impl Budget {
    /// A budget of `limit` bytes, with no share per source.
    #[must_use]
    pub fn new(limit: usize) -> Arc<Self> {
        Self::with_shares(limit, limit, 0)
    }

    /// A budget of `limit` bytes of which one source may hold `share`; the
    /// last `reserve` bytes go only to sources within their first
    /// [`MAX_HEADER_BLOCK`].
    #[must_use]
    pub fn with_shares(limit: usize, share: usize, reserve: usize) -> Arc<Self> {
        Arc::new(Self {
            held: Mutex::new(Held::default()),
            limit,
            share,
            reserve: reserve.min(limit),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay consistent whatever panicked while holding it.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes held now.
    #[must_use]
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// Bytes `source` holds now.
    #[must_use]
    pub fn used_by(&self, source: Source) -> usize {
        self.lock().sources.get(&source).copied().unwrap_or(0)
    }

    /// Sources holding bytes now.
    #[must_use]
    pub fn sources(&self) -> usize {
        self.lock().sources.len()
    }

    /// Takes up to `want` bytes for `source` (none: the budget alone
    /// bounds it); returns how many were granted, and why fewer.
    fn take(&self, source: Option<Source>, want: usize) -> (usize, Option<Short>) {
        let mut h = self.lock();
        let free = self.limit.saturating_sub(h.used);
        let Some(src) = source else {
            let got = want.min(free);
            h.used += got;
            return (got, (got < want).then_some(Short::Budget));
        };
        let held = h.sources.get(&src).copied().unwrap_or(0);
        if held == 0 && h.sources.len() >= MAX_SOURCES {
            return (0, (want > 0).then_some(Short::Budget));
        }
        let by_share = want.min(self.share.saturating_sub(held));
        // Within the source's first block-worth: the whole budget; past
        // it, all but the reserve.
        let small = by_share.min(MAX_HEADER_BLOCK.saturating_sub(held));
        let small_got = small.min(free);
        let big_room = (self.limit - self.reserve).saturating_sub(h.used + small_got);
        let big_got = if small_got == small {
            (by_share - small).min(big_room)
        } else {
            0
        };
        let got = small_got + big_got;
        h.used += got;
        if got > 0 {
            *h.sources.entry(src).or_insert(0) += got;
        }
        let short = if got == want {
            None
        } else if got == by_share {
            Some(Short::Share)
        } else {
            Some(Short::Budget)
        };
        (got, short)
    }

    fn give(&self, source: Option<Source>, n: usize) {
        if n == 0 {
            return;
        }
        let mut h = self.lock();
        h.used = h.used.saturating_sub(n);
        if let Some(src) = source
            && let std::collections::hash_map::Entry::Occupied(mut e) = h.sources.entry(src)
        {
            *e.get_mut() = e.get().saturating_sub(n);
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}
/// Streams whose request is being collected at once; the oldest is judged
/// as far as it went when another opens (servers allow ~100).
pub const MAX_OPEN_STREAMS: usize = 128;
/// Bytes kept of each naming field of a stream judged early.
const MAX_EARLY_VALUE: usize = 2048;
/// The largest HPACK dynamic table a peer may ask for (RFC 7541 §4.2);
/// the default is 4 KiB, servers rarely allow more than 64 KiB.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const CONTINUATION: u8 = 9;

/// Frames that carry a header block's bytes.
fn is_block(ty: u8) -> bool {
    matches!(ty, HEADERS | CONTINUATION | PUSH_PROMISE)
}

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What the start of a request stream says about HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// A prefix of the preface: wait for more.
    Partial,
    /// The preface: the connection speaks HTTP/2 from here.
    Complete,
    /// Not HTTP/2 with prior knowledge.
    No,
}

/// Whether `buf` starts with the client preface.
#[must_use]
pub fn preface(buf: &[u8]) -> Preface {
    if buf.len() >= PREFACE.len() {
        if buf.starts_with(PREFACE) {
            Preface::Complete
        } else {
            Preface::No
        }
    } else if PREFACE.starts_with(buf) {
        Preface::Partial
    } else {
        Preface::No
    }
}

/// Whether `buf` reads as a run of HTTP/2 frames from its first byte: each
/// header of a known type, within the default frame size, on stream 0 for
/// the connection's own frames and on a stream for the others; at least one
/// frame whole. For bytes taken from the middle of a connection (the agent
/// started after it, or NIC samples), where there is no preface to see.
#[must_use]
pub fn looks_like_frames(buf: &[u8]) -> bool {
    let mut rest = buf;
    let mut whole = 0;
    while let [a, b, c, ty, _, s0, s1, s2, s3, tail @ ..] = rest {
        let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
        let stream = u32::from_be_bytes([*s0, *s1, *s2, *s3]);
        let conn_frame = matches!(*ty, SETTINGS | 6 | 7);
        let ok = *ty <= CONTINUATION
            && len <= 16_384
            && stream >> 31 == 0
            && (conn_frame == (stream == 0) || *ty == 8);
        if !ok {
            return false;
        }
        let Some(next) = tail.get(len..) else {
            break;
        };
        whole += 1;
        rest = next;
    }
    whole > 0
}

/// Whether `buf` starts with a server's connection preface: a SETTINGS
/// frame on stream 0 that is not an acknowledgement (RFC 9113 §3.4), the
/// first thing an HTTP/2 server sends. Only the first response bytes of a
/// connection are tested this way: a later SETTINGS frame is no start.
#[must_use]
pub fn server_preface(buf: &[u8]) -> bool {
    match buf {
        [a, b, c, SETTINGS, flags, 0, 0, 0, 0, ..] => {
            let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
            flags & 0x1 == 0 && len % 6 == 0 && len <= 16_384
        }
        _ => false,
    }
}

/// Which end sent the bytes a [`Decoder`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Requests: starts with the preface.
    Client,
    /// Responses (and server pushes, decoded only to keep the table).
    Server,
}

/// A message completed by the bytes fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request: its head, and its body up to the cap. `truncated` is set
    /// when the body was cut, the stream was reset or judged before its end.
    Request { stream: u32, request: Request },
    /// A response (server side), with its trailers' fields after its head's.
    Response { stream: u32, response: Response },
    /// A header block that could not be decoded (the HPACK table is out of
    /// step): the request is unknown, never guessed.
    Unknown { stream: u32 },
    /// This side reset the stream (RST_STREAM): nothing more comes on it, so
    /// what is kept per stream (its client behind a proxy) can go.
    Reset { stream: u32 },
}

/// Why a decoder stopped reading its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The stream does not start with the preface.
    NoPreface,
    /// Bytes were missing outside DATA being passed over: frame boundaries
    /// are unknown from there.
    Gap,
    /// A frame the peer would refuse as a connection error (bad padding,
    /// a header block interrupted, a frame over the bounds above).
    Protocol,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames read.
    pub frames: u64,
    /// Header blocks decoded.
    pub header_blocks: u64,
    /// Header blocks that could not be decoded (after an HPACK error).
    pub unknown: u64,
    /// DATA bytes passed over (beyond the body cap, or of streams not followed).
    pub data_passed: u64,
    /// Header blocks past [`MAX_HEADER_BLOCK`] bytes or
    /// [`MAX_CONTINUATIONS`] frames: decoded whole (the table stays in
    /// step), the fields past the bounds dropped, the message judged
    /// truncated.
    pub blocks_cut: u64,
    /// Header blocks past [`MAX_HPACK_BLOCK`] bytes: the fields of their
    /// first bytes were judged as a truncated message; the rest could not be
    /// decoded within the bounds, so the table is out of step and later
    /// blocks are unknown.
    pub blocks_lost: u64,
    /// Of `blocks_lost`, those cut because the shared [`Budget`] was spent
    /// (or this decoder's source's share of it).
    pub blocks_over_budget: u64,
    /// Of `blocks_over_budget`, those cut because this decoder's [`Source`]
    /// held its whole share ([`SOURCE_SHARE`]).
    pub blocks_over_share: u64,
}

#[derive(Clone, Copy)]
struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    len: u32,
}

#[derive(Clone, Copy)]
enum State {
    /// Bytes of the preface matched so far.
    Preface(usize),
    /// Reading a frame header.
    Head,
    /// Buffering the payload of a frame read whole.
    Payload(Frame),
    /// Buffering the first `keep` bytes of a header-block frame that goes
    /// past [`MAX_HPACK_BLOCK`]; the rest is passed over.
    PayloadCut {
        f: Frame,
        keep: u32,
    },
    /// DATA whose padding length byte comes next.
    DataPadLen(Frame),
    /// DATA payload: `data` bytes of body, then `pad` bytes of padding.
    Data {
        stream: u32,
        end: bool,
        data: u32,
        pad: u32,
    },
    /// A frame passed over.
    Skip(u32),
    Lost(Lost),
}

/// A header block being collected.
struct Block {
    stream: u32,
    end_stream: bool,
    /// A PUSH_PROMISE's block: decoded for the table only.
    push: bool,
    bytes: Vec<u8>,
    continuations: u32,
    /// Past [`MAX_HPACK_BLOCK`] (judged as far as it went): its later
    /// frames are passed over.
    cut: bool,
}

/// A stream whose message is being collected.
struct Open {
    fields: Vec<(String, String)>,
    body: Vec<u8>,
    truncated: bool,
}

/// One direction of an HTTP/2 connection.
pub struct Decoder {
    side: Side,
    state: State,
    head: Vec<u8>,
    payload: Vec<u8>,
    block: Option<Block>,
    hpack: loona_hpack::Decoder<'static>,
    /// An HPACK error happened: the table is out of step for good.
    hpack_broken: bool,
    open: BTreeMap<u32, Open>,
    /// Streams judged before their end (pushed out of `open`, or stalled),
    /// with the fields that name them: DATA that comes later reopens them,
    /// so a body is judged, never passed over unseen because its head was
    /// judged early.
    early: BTreeMap<u32, Vec<(String, String)>>,
    /// The highest stream a HEADERS frame opened: a lower one carries trailers.
    last_stream: u32,
    body_cap: usize,
    budget: Arc<Budget>,
    /// Whose share of `budget` this direction's blocks take.
    source: Option<Source>,
    /// Bytes taken from `budget` for the block being collected.
    charged: usize,
    /// SETTINGS_HEADER_TABLE_SIZE this side announced last: it bounds the
    /// table the other direction's encoder may use.
    pub announced_table_size: Option<u32>,
    /// What was read.
    pub counters: Counters,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl Decoder {
    /// A decoder for one direction, keeping at most `body_cap` body bytes of
    /// each message.
    #[must_use]
    pub fn new(side: Side, body_cap: usize) -> Self {
        let mut hpack = loona_hpack::Decoder::new();
        // A peer may grow the table only as far as the other side allowed;
        // unseen, that is bounded here so a table costs at most this much.
        hpack.set_max_allowed_table_size(MAX_TABLE_SIZE);
        Self {
            side,
            state: match side {
                Side::Client => State::Preface(0),
                Side::Server => State::Head,
            },
            head: Vec::with_capacity(9),
            payload: Vec::new(),
            block: None,
            hpack,
            hpack_broken: false,
            open: BTreeMap::new(),
            early: BTreeMap::new(),
            last_stream: 0,
            body_cap,
            budget: SHARED_BUDGET.clone(),
            source: None,
            charged: 0,
            announced_table_size: None,
            counters: Counters::default(),
        }
    }

    /// Shares `budget` for the bytes of open header blocks.
    #[must_use]
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.release();
        self.budget = budget;
        self
    }

    /// Charges this direction's header blocks to `source`'s share of the
    /// budget (without one, only the whole budget bounds them).
    #[must_use]
    pub fn with_source(mut self, source: Source) -> Self {
        self.release();
        self.source = Some(source);
        self
    }

    /// Gives back what the block held.
    fn give_back(&mut self) {
        self.budget.give(self.source, self.charged);
        self.charged = 0;
    }

    /// Gives back what the block held once it is done with.
    fn release(&mut self) {
        self.give_back();
        if self.payload.capacity() > MAX_HEADER_BLOCK {
            self.payload = Vec::new();
        }
    }

    /// The other side announced `size` as its SETTINGS_HEADER_TABLE_SIZE:
    /// this direction's table may not grow past it.
    pub fn peer_table_size(&mut self, size: u32) {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        self.hpack
            .set_max_allowed_table_size(size.min(MAX_TABLE_SIZE));
    }

    /// Why the decoder stopped, if it did.
    #[must_use]
    pub fn lost(&self) -> Option<Lost> {
        match self.state {
            State::Lost(why) => Some(why),
            _ => None,
        }
    }

    /// Whether header blocks can no longer be decoded (lost, or an HPACK
    /// error): later requests are unknown.
    #[must_use]
    pub fn blind(&self) -> bool {
        self.hpack_broken || self.lost().is_some()
    }

    fn lose(&mut self, why: Lost) {
        self.state = State::Lost(why);
        self.payload = Vec::new();
        self.block = None;
        self.give_back();
    }

    /// Bytes from the current position that are not needed: DATA of a stream
    /// not followed (or past its cap) and frames passed over. They may be
    /// missing (see [`Decoder::skip_unseen`]).
    #[must_use]
    pub fn skippable(&self) -> u64 {
        match self.state {
            State::Data {
                stream, data, pad, ..
            } if !self.open.contains_key(&stream) && !self.early.contains_key(&stream) => {
                u64::from(data) + u64::from(pad)
            }
            State::Skip(n) => u64::from(n),
            _ => 0,
        }
    }

    /// `n` bytes were not seen. Within [`Decoder::skippable`] bytes nothing
    /// is lost; otherwise frame boundaries are, and the decoder stops.
    pub fn skip_unseen(&mut self, n: u64, out: &mut Vec<Message>) {
        if n == 0 {
            return;
        }
        if n > self.skippable() {
            self.lose(Lost::Gap);
            return;
        }
        // Within u32: skippable() is a sum of two u32 that n does not exceed.
        let mut n = n;
        self.counters.data_passed += n;
        match &mut self.state {
            State::Data {
                stream,
                end,
                data,
                pad,
            } => {
                let d = u64::from(*data).min(n);
                *data -= u32::try_from(d).unwrap_or(*data);
                n -= d;
                *pad -= u32::try_from(n).unwrap_or(*pad);
                if *data == 0 && *pad == 0 {
                    let (stream, end) = (*stream, *end);
                    self.state = State::Head;
                    if end {
                        self.end_stream(stream, out);
                    }
                }
            }
            State::Skip(left) => {
                *left -= u32::try_from(n).unwrap_or(*left);
                if *left == 0 {
                    self.state = State::Head;
                }
            }
            _ => {}
        }
    }

    /// Reads the next bytes of this direction, in order.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Message>) {
        self.feed_frames(data, out);
        if self.block.is_none()
            && !matches!(self.state, State::Payload(_) | State::PayloadCut { .. })
        {
            self.release();
        }
    }

    fn feed_frames(&mut self, mut data: &[u8], out: &mut Vec<Message>) {
        while !data.is_empty() {
            match self.state {
                State::Lost(_) => return,
                State::Preface(n) => {
                    let want = &PREFACE[n..];
                    let k = want.len().min(data.len());
                    if data[..k] != want[..k] {
                        self.lose(Lost::NoPreface);
                        return;
                    }
                    data = &data[k..];
                    self.state = if n + k == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(n + k)
                    };
                }
                State::Head => {
                    let k = (9 - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..k]);
                    data = &data[k..];
                    if let &[a, b, c, ty, flags, s0, s1, s2, s3] = self.head.as_slice() {
                        self.head.clear();
                        let frame = Frame {
                            ty,
                            flags,
                            stream: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
                            len: u32::from_be_bytes([0, a, b, c]),
                        };
                        self.begin(frame, out);
                    }
                }
                State::Payload(f) => {
                    let len = f.len as usize;
                    let k = (len - self.payload.len()).min(data.len());
                    if is_block(f.ty) {
                        // A header block's bytes take the shared budget as
                        // they arrive, not as its frames declare them: a
                        // declared length alone holds nothing.
                        let got = self.take_budget(k);
                        if got < k {
                            self.payload.extend_from_slice(&data[..got]);
                            data = &data[got..];
                            let keep = self.payload.len() as u32;
                            self.state = State::PayloadCut { f, keep };
                            self.cut_if_full(f, keep, out);
                            continue;
                        }
                    }
                    self.payload.extend_from_slice(&data[..k]);
                    data = &data[k..];
                    if self.payload.len() == len {
                        self.state = State::Head;
                        let payload = std::mem::take(&mut self.payload);
                        self.frame(f, &payload, out);
                        // Keep the allocation for the next frame.
                        self.payload = payload;
                        self.payload.clear();
                    }
                }
                State::PayloadCut { f, mut keep } => {
                    let k = (keep as usize - self.payload.len()).min(data.len());
                    let got = self.take_budget(k);
                    if got < k {
                        // Within `keep`, a u32.
                        keep = (self.payload.len() + got) as u32;
                        self.state = State::PayloadCut { f, keep };
                    }
                    self.payload.extend_from_slice(&data[..got]);
                    data = &data[got..];
                    self.cut_if_full(f, keep, out);
                }
                State::DataPadLen(f) => {
                    let pad = u32::from(data[0]);
                    data = &data[1..];
                    if pad >= f.len {
                        self.lose(Lost::Protocol);
                        return;
                    }
                    self.data_state(
                        f.stream,
                        f.flags & END_STREAM != 0,
                        f.len - 1 - pad,
                        pad,
                        out,
                    );
                }
                State::Data {
                    stream,
                    end,
                    data: left,
                    pad,
                } => {
                    let k = (left as usize).min(data.len());
                    self.body(stream, &data[..k], out);
                    data = &data[k..];
                    let p = (pad as usize).min(data.len());
                    data = &data[p..];
                    // k and p are at most `left` and `pad`, both u32.
                    let (left, pad) = (left - k as u32, pad - p as u32);
                    self.data_state(stream, end, left, pad, out);
                }
                State::Skip(left) => {
                    let k = (left as usize).min(data.len());
                    data = &data[k..];
                    let left = left - k as u32;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Skip(left)
                    };
                }
            }
        }
    }

    /// The fields of a stream whose head was read and whose message has not
    /// ended (or was judged early and may go on): what names it, and its
    /// client behind a proxy, for a response that comes before its end.
    #[must_use]
    pub fn fields_of(&self, stream: u32) -> Option<&[(String, String)]> {
        self.open
            .get(&stream)
            .map(|o| o.fields.as_slice())
            .or_else(|| self.early.get(&stream).map(Vec::as_slice))
    }

    /// Whether a stream's message is being collected.
    #[must_use]
    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Judges what the open streams hold so far (the connection ended or
    /// stalled): each becomes a truncated message; later DATA on them is
    /// passed over.
    pub fn flush(&mut self, out: &mut Vec<Message>) {
        for (stream, open) in std::mem::take(&mut self.open) {
            self.judge_early(stream, open, out);
        }
    }

    /// Judges a stream before its end, and remembers what names it so that
    /// its later DATA is judged too.
    fn judge_early(&mut self, stream: u32, mut open: Open, out: &mut Vec<Message>) {
        open.truncated = true;
        let names = open
            .fields
            .iter()
            .filter(|(n, _)| n.starts_with(':') || n == "content-type" || is_forwarding(n))
            .map(|(n, v)| {
                (
                    n.clone(),
                    crate::decode::truncate(v, MAX_EARLY_VALUE).to_owned(),
                )
            })
            .collect();
        // A body already judged up to the cap needs nothing more.
        let more = open.body.len() < self.body_cap;
        out.push(self.message(stream, open));
        if more {
            self.early.insert(stream, names);
            if self.early.len() > MAX_OPEN_STREAMS {
                self.early.pop_first();
            }
        }
    }

    /// Starts collecting `stream`; with the table full, the oldest stream is
    /// judged as far as it went.
    fn insert_open(&mut self, stream: u32, open: Open, out: &mut Vec<Message>) {
        if self.open.len() >= MAX_OPEN_STREAMS
            && let Some((old, first)) = self.open.pop_first()
        {
            self.judge_early(old, first, out);
        }
        self.open.insert(stream, open);
    }

    fn data_state(&mut self, stream: u32, end: bool, data: u32, pad: u32, out: &mut Vec<Message>) {
        if data == 0 && pad == 0 {
            self.state = State::Head;
            if end {
                self.end_stream(stream, out);
            }
        } else {
            self.state = State::Data {
                stream,
                end,
                data,
                pad,
            };
        }
    }

    /// Body bytes of a stream. Past the cap, the message is judged from its
    /// first bytes (as an HTTP/1 body is) and the rest is passed over.
    fn body(&mut self, stream: u32, bytes: &[u8], out: &mut Vec<Message>) {
        if !self.open.contains_key(&stream)
            && let Some(fields) = self.early.remove(&stream)
        {
            let open = Open {
                fields,
                body: Vec::new(),
                truncated: true,
            };
            self.insert_open(stream, open, out);
        }
        let Some(open) = self.open.get_mut(&stream) else {
            self.counters.data_passed += bytes.len() as u64;
            return;
        };
        let room = self.body_cap.saturating_sub(open.body.len());
        let take = room.min(bytes.len());
        open.body.extend_from_slice(&bytes[..take]);
        if take < bytes.len() {
            self.counters.data_passed += (bytes.len() - take) as u64;
            if let Some(mut open) = self.open.remove(&stream) {
                open.truncated = true;
                out.push(self.message(stream, open));
            }
        }
    }

    fn begin(&mut self, f: Frame, out: &mut Vec<Message>) {
        self.counters.frames += 1;
        // A header block is a unit: nothing may come between its frames.
        if let Some(b) = &self.block
            && (f.ty != CONTINUATION || f.stream != b.stream)
        {
            self.lose(Lost::Protocol);
            return;
        }
        match f.ty {
            DATA if f.stream == 0 => self.lose(Lost::Protocol),
            DATA if f.flags & PADDED != 0 => {
                if f.len == 0 {
                    self.lose(Lost::Protocol);
                } else {
                    self.state = State::DataPadLen(f);
                }
            }
            DATA => self.data_state(f.stream, f.flags & END_STREAM != 0, f.len, 0, out),
            CONTINUATION if self.block.as_ref().is_some_and(|b| b.cut) => {
                // The rest of a block already judged as far as it went.
                if f.flags & END_HEADERS != 0 {
                    self.block = None;
                    self.give_back();
                }
                if f.len > 0 {
                    self.state = State::Skip(f.len);
                }
            }
            HEADERS | CONTINUATION | PUSH_PROMISE
                if f.len as usize + self.block.as_ref().map_or(0, |b| b.bytes.len())
                    > MAX_HPACK_BLOCK =>
            {
                let held = self.block.as_ref().map_or(0, |b| b.bytes.len());
                // At most MAX_HPACK_BLOCK, within u32; charged as it
                // arrives, like any header block.
                let keep = MAX_HPACK_BLOCK.saturating_sub(held).min(f.len as usize) as u32;
                if keep == 0 {
                    self.frame_cut(f, &[], out);
                } else {
                    self.state = State::PayloadCut { f, keep };
                }
            }
            HEADERS | CONTINUATION | PUSH_PROMISE if f.len == 0 => self.frame(f, &[], out),
            HEADERS | CONTINUATION | PUSH_PROMISE => self.state = State::Payload(f),
            SETTINGS | RST_STREAM => {
                if f.len as usize > MAX_HEADER_BLOCK {
                    self.lose(Lost::Protocol);
                } else if f.len == 0 {
                    self.frame(f, &[], out);
                } else {
                    self.state = State::Payload(f);
                }
            }
            _ if f.len == 0 => {}
            _ => self.state = State::Skip(f.len),
        }
    }

    /// Takes up to `n` bytes of the budget for the block being collected;
    /// what it got (less: the block is cut, counted here).
    fn take_budget(&mut self, n: usize) -> usize {
        let (got, short) = self.budget.take(self.source, n);
        self.charged += got;
        if let Some(short) = short {
            self.counters.blocks_over_budget += 1;
            self.counters.blocks_over_share += u64::from(short == Short::Share);
        }
        got
    }

    /// A cut frame whose kept bytes are all in: judged as far as it went.
    fn cut_if_full(&mut self, f: Frame, keep: u32, out: &mut Vec<Message>) {
        if self.payload.len() == keep as usize {
            let payload = std::mem::take(&mut self.payload);
            self.frame_cut(f, &payload, out);
            self.payload = payload;
            self.payload.clear();
        }
    }

    fn frame(&mut self, f: Frame, payload: &[u8], out: &mut Vec<Message>) {
        match f.ty {
            HEADERS | PUSH_PROMISE => {
                if !self.open_block(f, payload) {
                    return;
                }
                if f.flags & END_HEADERS != 0 {
                    self.end_block(out);
                }
            }
            CONTINUATION => {
                let Some(b) = &mut self.block else {
                    self.lose(Lost::Protocol);
                    return;
                };
                // Past the bounds of what is judged, the block is still
                // collected (up to MAX_HPACK_BLOCK) and decoded whole, so the
                // table stays in step; end_block drops the fields past them.
                b.continuations = b.continuations.saturating_add(1);
                b.bytes.extend_from_slice(payload);
                if f.flags & END_HEADERS != 0 {
                    self.end_block(out);
                }
            }
            SETTINGS => {
                if f.flags & 0x1 != 0 {
                    return; // ACK
                }
                if !payload.len().is_multiple_of(6) {
                    self.lose(Lost::Protocol);
                    return;
                }
                for s in payload.chunks_exact(6) {
                    if let &[0, 1, a, b, c, d] = s {
                        self.announced_table_size = Some(u32::from_be_bytes([a, b, c, d]));
                    }
                }
            }
            RST_STREAM => {
                // A reset stream is judged as far as it went: the handler
                // may have started on its head.
                self.early.remove(&f.stream);
                if let Some(mut open) = self.open.remove(&f.stream) {
                    open.truncated = true;
                    out.push(self.message(f.stream, open));
                }
                if f.stream != 0 {
                    out.push(Message::Reset { stream: f.stream });
                }
            }
            _ => {}
        }
    }

    /// Starts the header block of a HEADERS or PUSH_PROMISE frame from its
    /// payload (all of it, or its first bytes when the frame is cut): padding,
    /// priority and promised stream taken off. False: the frame is refused
    /// and the decoder stopped.
    fn open_block(&mut self, f: Frame, payload: &[u8]) -> bool {
        let push = f.ty == PUSH_PROMISE;
        if push && self.side == Side::Client || f.stream == 0 {
            self.lose(Lost::Protocol);
            return false;
        }
        let mut p = payload;
        if f.flags & PADDED != 0 {
            // Padding sits at the frame's end: keep only what precedes it.
            let Some((&pad, tail)) = p.split_first() else {
                self.lose(Lost::Protocol);
                return false;
            };
            let Some(fields_len) = (f.len as usize).checked_sub(1 + usize::from(pad)) else {
                self.lose(Lost::Protocol);
                return false;
            };
            p = &tail[..tail.len().min(fields_len)];
        }
        // A priority block (HEADERS) or the promised stream (PUSH_PROMISE).
        let skip = if push {
            4
        } else if f.flags & PRIORITY != 0 {
            5
        } else {
            0
        };
        let Some(p) = p.get(skip..) else {
            self.lose(Lost::Protocol);
            return false;
        };
        self.block = Some(Block {
            stream: f.stream,
            end_stream: !push && f.flags & END_STREAM != 0,
            push,
            bytes: p.to_vec(),
            continuations: 0,
            cut: false,
        });
        true
    }

    /// A header-block frame of which only the first `payload.len()` bytes
    /// were kept (the block went past [`MAX_HPACK_BLOCK`]): the block is cut
    /// there and the rest of the frame passed over.
    fn frame_cut(&mut self, f: Frame, payload: &[u8], out: &mut Vec<Message>) {
        let rest = f.len - payload.len() as u32;
        self.state = if rest == 0 {
            State::Head
        } else {
            State::Skip(rest)
        };
        if f.ty == CONTINUATION {
            let Some(b) = &mut self.block else {
                self.lose(Lost::Protocol);
                return;
            };
            b.continuations = b.continuations.saturating_add(1);
            b.bytes.extend_from_slice(payload);
        } else if !self.open_block(f, payload) {
            return;
        }
        self.cut_block(out);
        if f.flags & END_HEADERS != 0 {
            self.block = None;
        }
    }

    /// Judges the block being collected as far as it went: the fields that
    /// decode from its kept bytes make a truncated message (a request the
    /// server may act on, never passed over unseen). What was not kept may
    /// have changed the HPACK table, so later blocks are unknown.
    fn cut_block(&mut self, out: &mut Vec<Message>) {
        let Some(b) = &mut self.block else {
            return;
        };
        b.cut = true;
        let bytes = std::mem::take(&mut b.bytes);
        let (stream, end_stream, push) = (b.stream, b.end_stream, b.push);
        // Nothing of the block is held past here.
        self.release();
        self.counters.blocks_lost += 1;
        self.counters.header_blocks += 1;
        let fields = (!self.hpack_broken).then(|| decode_prefix(&mut self.hpack, &bytes));
        self.hpack_broken = true;
        let Some(fields) = fields.filter(|f| !f.is_empty()) else {
            self.counters.unknown += 1;
            if !push && stream > self.last_stream {
                self.last_stream = stream;
                out.push(Message::Unknown { stream });
            }
            return;
        };
        if push {
            return;
        }
        if let Some(mut open) = self.open.remove(&stream) {
            // Cut trailers: the stream is judged with what came of them.
            let mut room = MAX_HEADERS.saturating_sub(open.fields.len());
            for f in fields {
                if room == 0 {
                    break;
                }
                if self.side == Side::Client && is_forwarding(&f.0) {
                    continue;
                }
                room -= 1;
                open.fields.push(f);
            }
            open.truncated = true;
            out.push(self.message(stream, open));
            return;
        }
        if stream <= self.last_stream && self.side == Side::Client {
            return;
        }
        self.last_stream = self.last_stream.max(stream);
        let open = Open {
            fields,
            body: Vec::new(),
            truncated: true,
        };
        if end_stream {
            out.push(self.message(stream, open));
        } else {
            self.judge_early(stream, open, out);
        }
    }

    fn end_block(&mut self, out: &mut Vec<Message>) {
        let Some(block) = self.block.take() else {
            return;
        };
        // The block is whole: what it held goes back now, not when a write
        // happens to end between frames (a client that always ends its
        // writes mid-frame would otherwise pile its blocks onto the budget
        // every connection shares, until HTTP/2 decoding stopped for all).
        self.give_back();
        self.counters.header_blocks += 1;
        let stream = block.stream;
        // Past the bounds a server reads: decoded whole all the same (the
        // table stays in step), judged as far as the bounds go.
        let over = block.bytes.len() > MAX_HEADER_BLOCK || block.continuations > MAX_CONTINUATIONS;
        self.counters.blocks_cut += u64::from(over);
        let fields = if self.hpack_broken {
            None
        } else {
            decode_block(&mut self.hpack, &block.bytes).map(|(fields, cut)| (fields, cut || over))
        };
        let Some((fields, cut)) = fields else {
            self.hpack_broken = true;
            self.counters.unknown += 1;
            if !block.push && stream > self.last_stream {
                self.last_stream = stream;
                out.push(Message::Unknown { stream });
            }
            self.open.remove(&stream);
            return;
        };
        if block.push {
            return;
        }
        if let Some(open) = self.open.get_mut(&stream) {
            // Trailers (gRPC's status comes here). A stream holds at most
            // what one header block may: repeated blocks that reference big
            // table entries would otherwise grow it without bound.
            let held: usize = open.fields.iter().map(|(n, v)| n.len() + v.len()).sum();
            let mut room = MAX_HEADER_BYTES.saturating_sub(held);
            for (n, v) in fields {
                // A proxy names the client in the head it writes; request
                // trailers are the client's own words, passed along, and a
                // forwarding field there would let a client blame another.
                if self.side == Side::Client && is_forwarding(&n) {
                    continue;
                }
                if open.fields.len() >= MAX_HEADERS || n.len() + v.len() > room {
                    open.truncated = true;
                    break;
                }
                room -= n.len() + v.len();
                open.fields.push((n, v));
            }
            open.truncated |= cut;
            if block.end_stream {
                self.end_stream(stream, out);
            }
            return;
        }
        if stream <= self.last_stream && self.side == Side::Client {
            // Trailers of a stream already judged, or a reused id the
            // server refuses: not a new request.
            if block.end_stream {
                self.early.remove(&stream);
            }
            return;
        }
        self.last_stream = self.last_stream.max(stream);
        let open = Open {
            fields,
            body: Vec::new(),
            truncated: cut,
        };
        if block.end_stream {
            out.push(self.message(stream, open));
            return;
        }
        self.insert_open(stream, open, out);
    }

    fn end_stream(&mut self, stream: u32, out: &mut Vec<Message>) {
        self.early.remove(&stream);
        if let Some(open) = self.open.remove(&stream) {
            out.push(self.message(stream, open));
        }
    }

    fn message(&self, stream: u32, open: Open) -> Message {
        match self.side {
            Side::Client => Message::Request {
                stream,
                request: request(open),
            },
            Side::Server => Message::Response {
                stream,
                response: response(open),
            },
        }
    }
}

/// Whether a field names the client behind a proxy (what the agent reads
/// for attribution).
#[must_use]
pub fn is_forwarding(name: &str) -> bool {
    name.eq_ignore_ascii_case("x-forwarded-for") || name.eq_ignore_ascii_case("forwarded")
}

/// Decodes one header block; `None` on an HPACK error. At most
/// [`MAX_HEADERS`] fields and [`MAX_HEADER_BYTES`] of names and values are
/// kept (the rest is still decoded, to keep the table in step): the flag
/// says some were left out.
fn decode_block(
    hpack: &mut loona_hpack::Decoder<'static>,
    bytes: &[u8],
) -> Option<(Vec<(String, String)>, bool)> {
    let (fields, cut, res) = decode_fields(hpack, bytes);
    match res {
        // loona-hpack refuses a block that ends with a table size update
        // (one made only of it, say) after applying it; servers decode such
        // blocks, so they must not blind us to the rest of the connection.
        Ok(()) | Err(loona_hpack::decoder::DecoderError::SizeUpdateAtEnd) => Some((fields, cut)),
        Err(_) => None,
    }
}

/// Decodes the fields of a header block's first bytes (the rest was not
/// kept): those whole before the cut, within the bounds of [`decode_block`].
fn decode_prefix(hpack: &mut loona_hpack::Decoder<'static>, bytes: &[u8]) -> Vec<(String, String)> {
    decode_fields(hpack, bytes).0
}

/// The fields of `bytes` as far as they decode, whether some were left out
/// for the bounds, and how decoding ended.
fn decode_fields(
    hpack: &mut loona_hpack::Decoder<'static>,
    bytes: &[u8],
) -> (
    Vec<(String, String)>,
    bool,
    Result<(), loona_hpack::decoder::DecoderError>,
) {
    let mut fields = Vec::new();
    let mut size = 0usize;
    let mut cut = false;
    let res =
        crate::hpack_prepass::decode_with_cb(hpack, bytes, |name: Cow<[u8]>, value: Cow<[u8]>| {
            size += name.len() + value.len();
            if fields.len() >= MAX_HEADERS || size > MAX_HEADER_BYTES {
                cut = true;
                return;
            }
            fields.push((lossy(&name), lossy(&value)));
        });
    (fields, cut, res)
}

fn request(open: Open) -> Request {
    let mut req = Request {
        version: HTTP_2,
        body: open.body,
        truncated: open.truncated,
        ..Request::default()
    };
    let mut authority = None;
    for (name, value) in open.fields {
        match name.as_str() {
            ":method" => req.method = value,
            ":path" => req.target = value,
            ":authority" => authority = Some(value),
            n if n.starts_with(':') => {}
            _ => req.headers.push((name, value)),
        }
    }
    // What an HTTP/1 gateway does: `:authority` stands for `Host`.
    if let Some(a) = authority
        && req.header("host").is_none()
    {
        req.headers.insert(0, ("host".into(), a));
    }
    (req.path, req.query) = split_target(&req.target);
    req
}

fn response(open: Open) -> Response {
    let mut resp = Response {
        version: HTTP_2,
        body: open.body,
        truncated: open.truncated,
        ..Response::default()
    };
    for (name, value) in open.fields {
        if name == ":status" {
            resp.status = value.trim().parse().unwrap_or(0);
        } else if !name.starts_with(':') {
            resp.headers.push((name, value));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame: header and payload.
    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn block(enc: &mut loona_hpack::Encoder<'_>, fields: &[(&str, &str)]) -> Vec<u8> {
        enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn get(enc: &mut loona_hpack::Encoder<'_>, stream: u32, path: &str) -> Vec<u8> {
        let b = block(
            enc,
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "api.test"),
                (":path", path),
                ("user-agent", "nghttp2/1.52"),
            ],
        );
        frame(HEADERS, END_HEADERS | END_STREAM, stream, &b)
    }

    fn start() -> Vec<u8> {
        let mut v = PREFACE.to_vec();
        v.extend(frame(
            SETTINGS,
            0,
            0,
            &[0, 1, 0, 0, 0x10, 0, 0, 3, 0, 0, 0, 100],
        ));
        v.extend(frame(8, 0, 0, &[0, 0xff, 0, 0]));
        v
    }

    fn feed_in(d: &mut Decoder, bytes: &[u8], rec: usize) -> Vec<Message> {
        let mut out = Vec::new();
        for c in bytes.chunks(rec) {
            d.feed(c, &mut out);
        }
        out
    }

    fn paths(out: &[Message]) -> Vec<String> {
        out.iter()
            .filter_map(|m| match m {
                Message::Request { request, .. } => Some(request.target.clone()),
                Message::Response { response, .. } => Some(response.status.to_string()),
                Message::Unknown { .. } => Some("?".into()),
                Message::Reset { .. } => None,
            })
            .collect()
    }

    #[test]
    fn frames_are_recognised_mid_connection() {
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = get(&mut enc, 7, "/a");
        bytes.extend(frame(8, 0, 0, &[0, 0, 1, 0]));
        assert!(looks_like_frames(&bytes));
        assert!(looks_like_frames(&bytes[..bytes.len() - 2]));
        assert!(!looks_like_frames(&bytes[..5]));
        assert!(!looks_like_frames(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!looks_like_frames(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
        ));
        // SETTINGS on a stream, DATA on stream 0: not HTTP/2.
        assert!(!looks_like_frames(&frame(SETTINGS, 0, 1, &[])));
        assert!(!looks_like_frames(&frame(DATA, 0, 0, b"x")));
    }

    #[test]
    fn a_server_preface_is_a_settings_frame_that_is_no_ack() {
        assert!(server_preface(&frame(
            SETTINGS,
            0,
            0,
            &[0, 1, 0, 0, 0x10, 0]
        )));
        assert!(server_preface(&frame(SETTINGS, 0, 0, &[])));
        assert!(!server_preface(&frame(SETTINGS, 1, 0, &[])), "an ack");
        assert!(!server_preface(&frame(SETTINGS, 0, 1, &[])));
        assert!(!server_preface(&frame(SETTINGS, 0, 0, &[0; 5])));
        assert!(!server_preface(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!server_preface(&frame(SETTINGS, 0, 0, &[])[..8]));
    }

    #[test]
    fn preface_is_recognised() {
        assert_eq!(preface(b"PRI * HT"), Preface::Partial);
        assert_eq!(preface(PREFACE), Preface::Complete);
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Preface::No);
        assert_eq!(preface(b"GET / HTTP/1.1\r\n"), Preface::No);
    }

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        // RFC 7541 appendix C.3: three requests on one connection, the
        // later ones referring to the first's dynamic-table entries.
        let c31 =
            b"\x82\x86\x84\x41\x0f\x77\x77\x77\x2e\x65\x78\x61\x6d\x70\x6c\x65\x2e\x63\x6f\x6d";
        let c32 = b"\x82\x86\x84\xbe\x58\x08\x6e\x6f\x2d\x63\x61\x63\x68\x65";
        let c33 = b"\x82\x87\x85\xbf\x40\x0a\x63\x75\x73\x74\x6f\x6d\x2d\x6b\x65\x79\x0c\x63\x75\x73\x74\x6f\x6d\x2d\x76\x61\x6c\x75\x65";
        let mut bytes = start();
        for (i, b) in [&c31[..], c32, c33].iter().enumerate() {
            bytes.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                2 * i as u32 + 1,
                b,
            ));
        }
        for rec in [1, 5, 1000] {
            let mut d = Decoder::new(Side::Client, 1024);
            let out = feed_in(&mut d, &bytes, rec);
            assert_eq!(paths(&out), ["/", "/", "/index.html"], "records of {rec}");
            let Message::Request { request, .. } = &out[2] else {
                panic!("{out:?}");
            };
            assert_eq!(request.method, "GET");
            assert_eq!(request.header("host"), Some("www.example.com"));
            assert_eq!(request.header("custom-key"), Some("custom-value"));
            assert_eq!(request.version, HTTP_2);
            let Message::Request { request, .. } = &out[1] else {
                panic!();
            };
            assert_eq!(request.header("cache-control"), Some("no-cache"));
        }
    }

    #[test]
    fn many_requests_keep_their_paths() {
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = start();
        let mut want = Vec::new();
        for i in 0..300u32 {
            let p = format!("/items/{}?q={}", i % 7, i);
            bytes.extend(get(&mut enc, 2 * i + 1, &p));
            want.push(p);
        }
        let mut d = Decoder::new(Side::Client, 1024);
        let out = feed_in(&mut d, &bytes, 1024);
        assert_eq!(paths(&out), want);
        let Message::Request { request, .. } = &out[299] else {
            panic!();
        };
        assert_eq!(request.path, "/items/5");
        assert_eq!(request.query.as_deref(), Some("q=299"));
    }

    #[test]
    fn bodies_continuations_padding_and_caps() {
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = start();
        let b = block(
            &mut enc,
            &[
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/pkg.Notes/Create"),
                (":authority", "a"),
                ("content-type", "application/grpc"),
            ],
        );
        // The block split over HEADERS (padded, with priority) and CONTINUATION.
        let (h, c) = b.split_at(b.len() / 2);
        let mut p = vec![3, 0, 0, 0, 0, 16];
        p.extend_from_slice(h);
        p.extend_from_slice(&[0, 0, 0]);
        bytes.extend(frame(HEADERS, PADDED | PRIORITY, 1, &p));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        // A second request interleaved, body over the cap.
        let b2 = block(
            &mut enc,
            &[(":method", "PUT"), (":path", "/big"), (":scheme", "http")],
        );
        bytes.extend(frame(HEADERS, END_HEADERS, 3, &b2));
        bytes.extend(frame(DATA, 0, 1, b"\0\0\0\0\x05hel"));
        bytes.extend(frame(DATA, 0, 3, &[b'x'; 100]));
        let mut padded = vec![2];
        padded.extend_from_slice(b"lo");
        padded.extend_from_slice(&[0, 0]);
        bytes.extend(frame(DATA, PADDED | END_STREAM, 1, &padded));
        bytes.extend(frame(DATA, END_STREAM, 3, &[b'y'; 100]));
        for rec in [1, 3, 4096] {
            let mut d = Decoder::new(Side::Client, 64);
            let out = feed_in(&mut d, &bytes, rec);
            // The big one is judged as soon as its body passes the cap.
            assert_eq!(paths(&out), ["/big", "/pkg.Notes/Create"]);
            let Message::Request { request, .. } = &out[1] else {
                panic!();
            };
            assert_eq!(request.body, b"\0\0\0\0\x05hello");
            assert!(!request.truncated);
            let Message::Request { request, .. } = &out[0] else {
                panic!();
            };
            assert_eq!(request.body.len(), 64);
            assert!(request.truncated);
            assert_eq!(d.lost(), None);
        }
    }

    /// Trailers made only of a table size update (valid HPACK that servers
    /// decode): the request before them and those after are still judged.
    #[test]
    fn a_block_ending_in_a_size_update_blinds_nothing() {
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = start();
        let b = block(&mut enc, &[(":method", "POST"), (":path", "/q")]);
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &b));
        bytes.extend(frame(DATA, 0, 1, b"id=1' OR 1=1--"));
        // Size update to 4,095 (001xxxxx, 31 + 4064 in two octets).
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &[0x3f, 0xe0, 0x1f],
        ));
        bytes.extend(get(&mut enc, 3, "/b"));
        let mut d = Decoder::new(Side::Client, 64);
        let out = feed_in(&mut d, &bytes, 100);
        assert_eq!(paths(&out), ["/q", "/b"]);
        assert!(!d.blind());
        let Message::Request { request, .. } = &out[0] else {
            panic!("{out:?}");
        };
        assert_eq!(&request.body[..], b"id=1' OR 1=1--");
    }

    /// Repeated header blocks on one open stream, each a few bytes that
    /// name a 4 KiB table entry: what the stream holds stays bounded.
    #[test]
    fn repeated_blocks_on_a_stream_are_bounded() {
        let mut enc = loona_hpack::Encoder::new();
        let mut d = Decoder::new(Side::Client, 64);
        let mut out = Vec::new();
        d.feed(&start(), &mut out);
        let big = "v".repeat(4000);
        let b = block(
            &mut enc,
            &[
                (":method", "POST"),
                (":path", "/s"),
                ("x-big", big.as_str()),
            ],
        );
        d.feed(&frame(HEADERS, END_HEADERS, 1, &b), &mut out);
        for _ in 0..2000 {
            let b = block(&mut enc, &[("x-big", big.as_str())]);
            assert!(b.len() < 8, "an indexed reference");
            d.feed(&frame(HEADERS, END_HEADERS, 1, &b), &mut out);
        }
        d.feed(&frame(DATA, END_STREAM, 1, b"x"), &mut out);
        let Some(Message::Request { request, .. }) = out.first() else {
            panic!("{out:?}");
        };
        let held: usize = request.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(held <= MAX_HEADER_BYTES, "{held}");
        assert!(request.truncated);
    }

    /// A stream pushed out of the table by 128 newer ones, or judged at a
    /// stall, has its later body judged too (not passed over unseen).
    #[test]
    fn a_body_after_its_head_was_judged_early_is_still_judged() {
        let mut enc = loona_hpack::Encoder::new();
        let post = |enc: &mut loona_hpack::Encoder<'_>, stream: u32| {
            let b = block(enc, &[(":method", "POST"), (":path", "/q")]);
            frame(HEADERS, END_HEADERS, stream, &b)
        };
        let mut d = Decoder::new(Side::Client, 64);
        let mut out = Vec::new();
        d.feed(&start(), &mut out);
        d.feed(&post(&mut enc, 1), &mut out);
        for i in 1..=MAX_OPEN_STREAMS as u32 {
            d.feed(&post(&mut enc, 1 + 2 * i), &mut out);
        }
        assert_eq!(paths(&out), ["/q"], "stream 1 judged early");
        let data = frame(DATA, END_STREAM, 1, b"id=1' OR 1=1--");
        d.feed(&data[..9], &mut out);
        assert_eq!(d.skippable(), 0, "its body is not passed over");
        d.feed(&data[9..], &mut out);
        let Some(Message::Request { stream: 1, request }) = out.last() else {
            panic!("{out:?}");
        };
        assert_eq!(&request.body[..], b"id=1' OR 1=1--");
        assert_eq!(request.method, "POST");
        // A stall: judged as far as it went, then the body comes.
        let mut enc = loona_hpack::Encoder::new();
        let mut d = Decoder::new(Side::Client, 64);
        let mut out = Vec::new();
        d.feed(&start(), &mut out);
        d.feed(&post(&mut enc, 1), &mut out);
        d.flush(&mut out);
        d.feed(&data, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        let Some(Message::Request { request, .. }) = out.last() else {
            panic!("{out:?}");
        };
        assert_eq!(&request.body[..], b"id=1' OR 1=1--");
    }

    #[test]
    fn an_hpack_error_makes_later_requests_unknown() {
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = start();
        bytes.extend(get(&mut enc, 1, "/a"));
        // An index past the tables.
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0xff, 0x7f]));
        bytes.extend(get(&mut enc, 5, "/b"));
        let mut d = Decoder::new(Side::Client, 64);
        let out = feed_in(&mut d, &bytes, 100);
        assert_eq!(paths(&out), ["/a", "?", "?"]);
        assert!(d.blind());
    }

    #[test]
    fn a_gap_outside_skippable_data_loses_the_connection() {
        let mut enc = loona_hpack::Encoder::new();
        let mut d = Decoder::new(Side::Client, 16);
        let mut out = Vec::new();
        d.feed(&start(), &mut out);
        let b = block(&mut enc, &[(":method", "POST"), (":path", "/up")]);
        d.feed(&frame(HEADERS, END_HEADERS, 1, &b), &mut out);
        // 10 KB of DATA; the first 16 bytes are judged, then the request is
        // judged and the rest may be passed over unseen.
        let data = frame(DATA, END_STREAM, 1, &[b'z'; 10_000]);
        d.feed(&data[..9 + 16], &mut out);
        assert!(out.is_empty());
        assert_eq!(d.skippable(), 0, "the stream is still collected");
        d.flush(&mut out);
        assert_eq!(paths(&out), ["/up"]);
        assert_eq!(d.skippable(), 10_000 - 16);
        d.skip_unseen(10_000 - 16, &mut out);
        d.feed(&get(&mut enc, 3, "/next"), &mut out);
        assert_eq!(paths(&out), ["/up", "/next"]);
        // Bytes missing in a header block: lost for good.
        d.skip_unseen(5, &mut out);
        assert_eq!(d.lost(), Some(Lost::Gap));
        d.feed(&get(&mut enc, 5, "/x"), &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn continuation_count_saturates() {
        // An endless run of empty CONTINUATION frames: the count stops at
        // its top (never wraps or panics) and the block is still judged as
        // past the bounds when it ends.
        let mut d = Decoder::new(Side::Client, 16);
        let mut bytes = start();
        bytes.extend(frame(HEADERS, END_STREAM, 1, &[0x82, 0x84]));
        feed_in(&mut d, &bytes, 4096);
        if let Some(b) = &mut d.block {
            b.continuations = u32::MAX - 2;
        }
        let mut bytes = Vec::new();
        for _ in 0..10 {
            bytes.extend(frame(CONTINUATION, 0, 1, &[]));
        }
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &[]));
        let out = feed_in(&mut d, &bytes, 4096);
        assert_eq!(paths(&out), ["/"]);
        assert_eq!((d.lost(), d.counters.blocks_cut), (None, 1));
    }

    #[test]
    fn open_blocks_share_one_budget() {
        // Two connections each holding an unfinished header block: the
        // second goes past the shared budget, is cut (its later blocks are
        // unknown, counted) and the first is untouched. What a block held
        // is given back when it ends or its decoder goes.
        let budget = Budget::new(100_000);
        let mut a = Decoder::new(Side::Client, 16).with_budget(budget.clone());
        let mut b = Decoder::new(Side::Client, 16).with_budget(budget.clone());
        let held = [start(), frame(HEADERS, END_STREAM, 1, &[0x82; 60_000])].concat();
        feed_in(&mut a, &held, 16_384);
        assert_eq!(budget.used(), 60_000);
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = held.clone();
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &[]));
        bytes.extend(get(&mut enc, 3, "/next"));
        let out = feed_in(&mut b, &bytes, 16_384);
        assert_eq!(paths(&out).last().map(String::as_str), Some("?"));
        assert!(b.blind());
        assert_eq!(
            (b.counters.blocks_lost, b.counters.blocks_over_budget),
            (1, 1)
        );
        assert_eq!(budget.used(), 60_000);
        let out = feed_in(&mut a, &frame(CONTINUATION, END_HEADERS, 1, &[0x84]), 7);
        assert_eq!(paths(&out).len(), 1);
        assert!(!a.blind());
        assert_eq!(budget.used(), 0);
        feed_in(&mut a, &frame(HEADERS, END_STREAM, 5, &[0x82; 1000]), 7);
        assert_eq!(budget.used(), 1000);
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_source_past_its_share_cuts_its_own_blocks_and_no_one_elses() {
        // The agent's budget. One client (any address of one IPv6 /64)
        // really sends unfinished header blocks as large as decoded on five
        // connections: four hold its whole share, the fifth's block is cut
        // (counted as over the share; a cut block holds nothing); other
        // clients still decode a 60 KB path and the next request.
        let budget = Budget::with_shares(MAX_BLOCK_BUDGET, SOURCE_SHARE, SOURCE_RESERVE);
        let attacker = |host: u16| Source::of(format!("fd00:0:0:1::{host:x}").parse().unwrap());
        let open = [
            start(),
            frame(HEADERS, END_STREAM, 1, &[0x82; MAX_HPACK_BLOCK]),
        ]
        .concat();
        let mut held = Vec::new();
        for host in 1..=5 {
            let mut d = Decoder::new(Side::Client, 16)
                .with_budget(budget.clone())
                .with_source(attacker(host));
            feed_in(&mut d, &open, 16_384);
            held.push(d);
        }
        assert_eq!(budget.used_by(attacker(9)), SOURCE_SHARE);
        assert_eq!(budget.used(), SOURCE_SHARE);
        let over: Vec<_> = held
            .iter()
            .map(|d| (d.counters.blocks_over_budget, d.counters.blocks_over_share))
            .collect();
        assert_eq!(over, [(0, 0), (0, 0), (0, 0), (0, 0), (1, 1)]);
        assert!(held[4].blind() && !held[3].blind());

        for other in ["fd00:0:0:2::1", "198.18.0.9", "::ffff:198.18.0.10"] {
            let mut d = Decoder::new(Side::Client, 16)
                .with_budget(budget.clone())
                .with_source(Source::of(other.parse().unwrap()));
            let mut enc = loona_hpack::Encoder::new();
            let mut bytes = start();
            bytes.extend(get(&mut enc, 1, &format!("/{}", "a".repeat(60_000))));
            bytes.extend(get(&mut enc, 3, "/next"));
            let out = feed_in(&mut d, &bytes, 1500);
            assert_eq!(paths(&out).len(), 2, "{other}");
            assert_eq!(paths(&out)[1], "/next");
            assert!(!d.blind() && d.counters.blocks_over_budget == 0, "{other}");
        }
        // IPv4 and its mapped form are one source.
        assert_eq!(
            Source::of("198.18.0.10".parse().unwrap()),
            Source::of("::ffff:198.18.0.10".parse().unwrap())
        );

        // A block that ends gives its bytes back to its source.
        let out = feed_in(
            &mut held[0],
            &frame(CONTINUATION, END_HEADERS, 1, &[0x84]),
            7,
        );
        assert_eq!(paths(&out).len(), 1);
        assert_eq!(budget.used_by(attacker(1)), SOURCE_SHARE - MAX_HPACK_BLOCK);
        drop(held);
        assert_eq!((budget.used(), budget.sources()), (0, 0));
    }

    #[test]
    fn many_sources_holding_big_blocks_leave_the_reserve_to_ordinary_ones() {
        // 1 MB, 300 kB a source, the last 250 kB only for bytes within a
        // source's first 64 KiB.
        let b = Budget::with_shares(1_000_000, 300_000, 250_000);
        let src = |i: u8| Some(Source::of(std::net::Ipv4Addr::new(198, 18, 1, i).into()));
        assert_eq!(b.take(src(1), 300_000), (300_000, None));
        assert_eq!(b.take(src(1), 1), (0, Some(Short::Share)));
        assert_eq!(b.take(src(2), 300_000), (300_000, None));
        // Past its first 64 KiB, a third source finds only what is left
        // short of the reserve.
        assert_eq!(b.take(src(3), 300_000), (150_000, Some(Short::Budget)));
        assert_eq!(b.used(), 750_000);
        // Ordinary blocks of other sources still fit, up to 64 KiB each.
        assert_eq!(b.take(src(4), 60_000), (60_000, None));
        assert_eq!(b.take(src(4), 10_000), (5_536, Some(Short::Budget)));
        for i in 5..=7 {
            assert_eq!(b.take(src(i), 60_000), (60_000, None));
        }
        // The whole budget is held: nothing more for anyone.
        assert_eq!(b.take(src(8), 60_000), (4_464, Some(Short::Budget)));
        assert_eq!(b.used(), 1_000_000);
        assert_eq!(b.take(src(9), 1), (0, Some(Short::Budget)));
        // Giving back frees the source's entry.
        b.give(src(8), 4_464);
        assert_eq!((b.used_by(src(8).unwrap()), b.sources()), (0, 7));
        // Without a source (offline callers), only the budget bounds it.
        assert_eq!(b.take(None, 10_000), (4_464, Some(Short::Budget)));
    }

    #[test]
    fn a_declared_length_alone_holds_none_of_the_budget() {
        // 64 connections each declare a header block as large as one may
        // be and send a few bytes of it: they hold what they sent, not what
        // they declared, and another connection's requests still decode.
        let budget = Budget::new(MAX_HPACK_BLOCK);
        let mut stalled = Vec::new();
        for _ in 0..64 {
            let mut d = Decoder::new(Side::Client, 16).with_budget(budget.clone());
            let mut f = frame(HEADERS, END_STREAM, 1, &[0x82; 16]);
            // The frame header claims the largest block.
            let len = u32::try_from(MAX_HPACK_BLOCK).unwrap().to_be_bytes();
            f[..3].copy_from_slice(&len[1..]);
            feed_in(&mut d, &[start(), f].concat(), 7);
            stalled.push(d);
        }
        assert_eq!(budget.used(), 64 * 16);
        let mut d = Decoder::new(Side::Client, 16).with_budget(budget.clone());
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = start();
        bytes.extend(get(&mut enc, 1, &format!("/{}", "a".repeat(60_000))));
        bytes.extend(get(&mut enc, 3, "/next"));
        let out = feed_in(&mut d, &bytes, 1500);
        assert_eq!(paths(&out).len(), 2);
        assert_eq!(paths(&out)[1], "/next");
        assert!(!d.blind() && d.counters.blocks_over_budget == 0);
        drop(stalled);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn writes_that_end_mid_frame_hold_one_block_of_the_budget() {
        // Every write ends inside the next frame, so the decoder is never
        // between frames when a write ends: each block's share still goes
        // back when the block ends, and 200 requests of about 1 KiB decode
        // through a budget of 4 KiB.
        let budget = Budget::new(4096);
        let mut d = Decoder::new(Side::Client, 16).with_budget(budget.clone());
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = start();
        let long = format!("/{}", "a".repeat(1000));
        for i in 0..200u32 {
            bytes.extend(get(&mut enc, 2 * i + 1, &format!("{long}{i}")));
        }
        let out = feed_in(&mut d, &bytes, 997);
        let p = paths(&out);
        assert_eq!(p.len(), 200);
        assert!(
            p.iter().all(|p| p.starts_with(&long)),
            "{:?}",
            &p[p.len() - 3..]
        );
        assert!(!d.blind());
        assert!(budget.used() <= 2048, "{}", budget.used());
    }

    #[test]
    fn bounds_hold_on_hostile_frames() {
        // A CONTINUATION flood: past MAX_CONTINUATIONS the block is still
        // decoded whole (the table stays in step), its fields within the
        // bounds judged, marked truncated; the next block decodes.
        let mut d = Decoder::new(Side::Client, 16);
        let mut bytes = start();
        bytes.extend(frame(HEADERS, END_STREAM, 1, &[0x82]));
        for _ in 0..MAX_CONTINUATIONS + 500 {
            bytes.extend(frame(CONTINUATION, 0, 1, &[0x84]));
        }
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x84]));
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x82, 0x84]));
        let out = feed_in(&mut d, &bytes, 4096);
        assert_eq!(paths(&out), ["/", "/"]);
        let Message::Request { request, .. } = &out[0] else {
            panic!("{out:?}");
        };
        assert!(request.truncated);
        assert_eq!(
            (d.lost(), d.blind(), d.counters.blocks_cut),
            (None, false, 1)
        );
        // Blocks past MAX_HEADER_BLOCK bytes, over CONTINUATION frames or in
        // one frame larger than any server reads, in records of any size:
        // decoded whole, the fields past the bounds dropped (the request
        // line's come first and are judged), so a field the block adds to
        // the table after the cut is known to the blocks that refer to it.
        let mut enc = loona_hpack::Encoder::new();
        let pad = "p".repeat(15_000);
        let mut fields = vec![(":method", "POST"), (":path", "/login?u=1' OR '1'='1")];
        fields.extend(std::iter::repeat_n(("x-pad", pad.as_str()), 6));
        fields.push(("x-late", "/after-the-cut"));
        let b = block(&mut enc, &fields);
        // The next request refers to the entry added past the cut.
        let next = block(
            &mut enc,
            &[
                (":method", "GET"),
                (":path", "/next"),
                ("x-late", "/after-the-cut"),
            ],
        );
        assert!(next.len() < 20, "an indexed reference: {next:?}");
        assert!(b.len() > MAX_HEADER_BLOCK);
        let chunks: Vec<&[u8]> = b.chunks(16_384).collect();
        let mut split = start();
        for (i, c) in chunks.iter().enumerate() {
            let (ty, last) = (
                if i == 0 { HEADERS } else { CONTINUATION },
                i + 1 == chunks.len(),
            );
            split.extend(frame(ty, if last { END_HEADERS } else { 0 }, 1, c));
        }
        let mut whole = start();
        let len = u32::try_from(b.len()).unwrap().to_be_bytes();
        whole.extend([len[1], len[2], len[3], HEADERS, END_HEADERS, 0, 0, 0, 1]);
        whole.extend_from_slice(&b);
        for bytes in [split, whole] {
            for rec in [1000, 16_384, 100_000] {
                let mut d = Decoder::new(Side::Client, 16);
                let mut all = bytes.clone();
                all.extend(frame(DATA, END_STREAM, 1, b"{}"));
                all.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &next));
                let out = feed_in(&mut d, &all, rec);
                assert_eq!(
                    paths(&out),
                    ["/login?u=1' OR '1'='1", "/next"],
                    "records of {rec}"
                );
                let Message::Request { request, .. } = &out[0] else {
                    panic!("{out:?}");
                };
                assert_eq!(request.query.as_deref(), Some("u=1' OR '1'='1"));
                assert!(request.truncated);
                assert_eq!(request.header("x-late"), None, "past the bounds");
                let Message::Request { request, .. } = &out[1] else {
                    panic!("{out:?}");
                };
                assert_eq!(request.header("x-late"), Some("/after-the-cut"));
                assert!(!request.truncated);
                let c = d.counters;
                assert_eq!((d.lost(), c.blocks_cut, c.blocks_lost), (None, 1, 0));
            }
        }
        // Past MAX_HPACK_BLOCK: decoding the whole is beyond the bounds. What
        // decoded of its first bytes is judged, and the connection's later
        // blocks are unknown, said so, never guessed.
        let mut enc = loona_hpack::Encoder::new();
        let mut fields = vec![(":method", "POST"), (":path", "/login?u=1' OR '1'='1")];
        fields.extend(std::iter::repeat_n(("x-pad", pad.as_str()), 20));
        let b = block(&mut enc, &fields);
        assert!(b.len() > MAX_HPACK_BLOCK);
        let mut all = start();
        for (i, c) in b.chunks(16_384).enumerate() {
            let last = (i + 1) * 16_384 >= b.len();
            let ty = if i == 0 { HEADERS } else { CONTINUATION };
            all.extend(frame(ty, if last { END_HEADERS } else { 0 }, 1, c));
        }
        all.extend(get(&mut enc, 3, "/next"));
        let mut d = Decoder::new(Side::Client, 16);
        let out = feed_in(&mut d, &all, 16_384);
        assert_eq!(paths(&out), ["/login?u=1' OR '1'='1", "?"]);
        assert!(d.blind());
        assert_eq!((d.counters.blocks_lost, d.counters.unknown), (1, 1));
        // Padding longer than the frame; a frame between HEADERS and CONTINUATION.
        for bad in [
            frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]),
            [frame(HEADERS, 0, 1, &[0x82]), frame(8, 0, 0, &[0, 0, 0, 1])].concat(),
            frame(DATA, PADDED, 1, &[5, 1, 2]),
        ] {
            let mut d = Decoder::new(Side::Client, 16);
            feed_in(&mut d, &[start(), bad].concat(), 7);
            assert_eq!(d.lost(), Some(Lost::Protocol));
        }
        // A table-size update beyond the cap is an HPACK error.
        let mut d = Decoder::new(Side::Client, 16);
        let mut bytes = start();
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &[0x3f, 0xe1, 0xff, 0x07, 0x82],
        ));
        assert_eq!(paths(&feed_in(&mut d, &bytes, 64)), ["?"]);
        // Fields referring to a big table entry again and again are cut.
        let mut enc = loona_hpack::Encoder::new();
        let big = "v".repeat(4000);
        let mut b = block(
            &mut enc,
            &[(":method", "GET"), (":path", "/"), ("x-big", &big)],
        );
        // Index 62: the entry just inserted.
        b.extend(std::iter::repeat_n(0xbe, 100));
        let mut d = Decoder::new(Side::Client, 16);
        let out = feed_in(
            &mut d,
            &[start(), frame(HEADERS, END_HEADERS | END_STREAM, 1, &b)].concat(),
            4096,
        );
        let Message::Request { request, .. } = &out[0] else {
            panic!("{out:?}");
        };
        assert!(request.truncated);
        assert!(request.headers.len() < 20);
        // Not HTTP/2 at all.
        let mut d = Decoder::new(Side::Client, 16);
        feed_in(&mut d, b"GET / HTTP/1.1\r\n\r\n", 64);
        assert_eq!(d.lost(), Some(Lost::NoPreface));
    }

    #[test]
    fn settings_table_size_and_responses_with_trailers() {
        let mut enc = loona_hpack::Encoder::new();
        let mut d = Decoder::new(Side::Server, 1024);
        let mut bytes = frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x20, 0]);
        let h = block(
            &mut enc,
            &[(":status", "200"), ("content-type", "application/grpc")],
        );
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &h));
        bytes.extend(frame(DATA, 0, 1, b"\0\0\0\0\0"));
        let t = block(
            &mut enc,
            &[("grpc-status", "16"), ("grpc-message", "no token")],
        );
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &t));
        let out = feed_in(&mut d, &bytes, 3);
        assert_eq!(d.announced_table_size, Some(0x2000));
        let [Message::Response { response, .. }] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert_eq!(response.status, 200);
        assert_eq!(response.header("grpc-status"), Some("16"));
        // A size update above what the peer announced is refused.
        let mut d = Decoder::new(Side::Client, 16);
        d.peer_table_size(256);
        let mut bytes = start();
        // Size update to 1024 (0x20 | 31, then 993), then an indexed field.
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &[0x3f, 0xe1, 0x07, 0x82],
        ));
        assert_eq!(paths(&feed_in(&mut d, &bytes, 64)), ["?"]);
    }
}
