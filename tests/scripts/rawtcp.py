#!/usr/bin/python3
"""Raw-packet TCP games against a real server, for tests/tests/rawtcp.rs.

Run inside the client namespace (`ip netns exec NS /usr/bin/python3 ...`),
with the namespace's kernel RSTs to the server port dropped by nftables (the
kernel has no socket for this connection and would reset it). Completes a
real handshake with scapy, sends one request using the trick named by
--case, reads the server's answer, resets the connection, and prints one
JSON line: whether the handshake completed, how many request bytes the
server acknowledged, and the start of its answer.

Bounded: at most ~60 packets sent and ~8 seconds per run.
"""

import argparse
import json
import random
import select
import sys
import time

from scapy.all import (  # noqa: F401 (scapy's layers register on import)
    IP,
    TCP,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    PadN,
    Raw,
    conf,
    fragment,
    fragment6,
    get_if_hwaddr,
)

conf.verb = 0


class Conn:
    """One TCP connection driven by hand over a raw layer-2 socket."""

    def __init__(self, a, ext_headers=0):
        self.a = a
        self.v6 = ":" in a.dst
        self.ext = ext_headers
        self.sport = random.randint(20000, 60000)
        self.isn = random.randint(0, 2**31)
        self.seq = self.isn + 1
        self.ack = 0
        self.sock = conf.L2socket(iface=a.iface)
        self.l2 = Ether(src=get_if_hwaddr(a.iface), dst=a.dmac)
        self.got = {}  # server seq -> payload
        self.server_acked = None
        self.fin = False
        self.sent = 0

    def ip(self):
        if not self.v6:
            return IP(src=self.a.src, dst=self.a.dst)
        pkt = IPv6(src=self.a.src, dst=self.a.dst)
        if self.ext:
            # Hop-by-hop must come first; then destination-options headers
            # up to the number asked for, each with padding options.
            pkt = pkt / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\x00" * 4)])
            for _ in range(self.ext - 1):
                pkt = pkt / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 4)])
        return pkt

    def tcp(self, flags, seq=None, payload=b"", **kw):
        t = TCP(
            sport=self.sport,
            dport=self.a.dport,
            flags=flags,
            seq=self.seq if seq is None else seq,
            ack=self.ack if "A" in flags else 0,
            window=65535,
            **kw,
        )
        pkt = self.ip() / t
        if payload:
            pkt = pkt / Raw(payload)
        return pkt

    def send(self, pkt):
        self.sent += 1
        assert self.sent <= 60, "packet budget exceeded"
        self.sock.send(self.l2 / pkt)
        time.sleep(0.03)

    def poll(self, secs, until=None):
        """Reads the server's packets for up to `secs`, acknowledging its
        data; stops early when `until()` holds."""
        end = time.time() + secs
        while time.time() < end:
            if until and until():
                return
            r, _, _ = select.select([self.sock], [], [], max(0.0, end - time.time()))
            if not r:
                continue
            p = self.sock.recv()
            if p is None or TCP not in p:
                continue
            ipl = p[IPv6] if self.v6 and IPv6 in p else (p[IP] if IP in p else None)
            if ipl is None or ipl.src != self.a.dst or ipl.dst != self.a.src:
                continue
            t = p[TCP]
            if t.sport != self.a.dport or t.dport != self.sport:
                continue
            self.on_server(t)

    def on_server(self, t):
        flags = str(t.flags)
        if "S" in flags and "A" in flags:
            self.synack = t
            self.ack = t.seq + 1
            return
        if "A" in flags:
            acked = (t.ack - (self.isn + 1)) % 2**32
            if acked < 2**31:
                self.server_acked = max(self.server_acked or 0, acked)
        # Short frames carry Ethernet padding, which scapy parses apart.
        data = bytes(t[Raw].load) if Raw in t else b""
        if data:
            self.got[t.seq] = data
            end = (t.seq + len(data)) % 2**32
            if (end - self.ack) % 2**32 < 2**31:
                self.ack = end
        if "F" in flags:
            self.fin = True
            self.ack = (t.seq + len(data) + 1) % 2**32
        if data or "F" in flags:
            self.send(self.tcp("A"))

    def handshake(self):
        self.synack = None
        for _ in range(3):
            self.send(self.tcp("S", seq=self.isn))
            self.poll(1.0, until=lambda: self.synack is not None)
            if self.synack is not None:
                self.send(self.tcp("A"))
                return True
        return False

    def answer(self):
        data = b"".join(self.got[k] for k in sorted(self.got))
        return data.decode("latin-1")

    def close(self):
        # Frees the server's socket now rather than after its retransmissions.
        self.send(self.tcp("RA"))
        self.sock.close()


def run(a):
    attack = a.attack.encode("latin-1")
    benign = a.benign.encode("latin-1")
    c = Conn(a, ext_headers=8 if a.case == "ipv6-ext-headers" else 0)
    out = {"case": a.case, "handshake": False}
    if not c.handshake():
        print(json.dumps(out))
        return
    out["handshake"] = True
    if a.syn_only:
        c.close()
        print(json.dumps(out))
        return
    base = c.seq
    case = a.case
    if case in ("plain", "ipv6-ext-headers"):
        c.send(c.tcp("PA", payload=attack))
    elif case == "out-of-order":
        n = len(attack)
        cuts = [0, n // 3, 2 * n // 3, n]
        parts = [(base + cuts[i], attack[cuts[i] : cuts[i + 1]]) for i in range(3)]
        for seq, data in reversed(parts):
            c.send(c.tcp("PA", seq=seq, payload=data))
    elif case in ("overlap-attack-first", "overlap-benign-first"):
        # Both copies cover the request line; the rest follows once.
        assert len(attack) == len(benign), "attack and benign differ in length"
        k = attack.index(b"\r\n")
        first, second = (attack, benign) if case == "overlap-attack-first" else (benign, attack)
        assert first[k:] == second[k:], "the copies must differ only in the first line"
        c.send(c.tcp("PA", seq=base, payload=first[:k]))
        c.send(c.tcp("PA", seq=base, payload=second[:k]))
        c.send(c.tcp("PA", seq=base + k, payload=first[k:]))
    elif case in ("bad-tcp-checksum", "bad-ip-checksum", "no-ack-flag", "rst-data"):
        # Attack bytes the server's kernel must discard, then the benign
        # request at the same sequence number.
        if case == "bad-tcp-checksum":
            p = c.tcp("PA", payload=attack)
            p[TCP].chksum = IP(bytes(p))[TCP].chksum ^ 0x5555
            bad = p
        elif case == "bad-ip-checksum":
            p = c.tcp("PA", payload=attack)
            p[IP].chksum = IP(bytes(p)).chksum ^ 0x5555
            bad = p
        elif case == "no-ack-flag":
            bad = c.tcp("P", payload=attack)
        else:
            # In the window but not at the next expected byte: Linux answers
            # with a challenge ACK and keeps the connection.
            bad = c.tcp("RA", seq=base + 1, payload=attack)
        c.send(bad)
        c.poll(0.3)
        out["acked_after_bad"] = c.server_acked
        c.send(c.tcp("PA", seq=base, payload=benign))
    elif case in ("ipv4-fragments", "ipv6-fragments"):
        p = c.tcp("PA", payload=attack)
        frags = fragment(p, fragsize=48) if case == "ipv4-fragments" else None
        if frags is None:
            p = IPv6(src=a.src, dst=a.dst) / IPv6ExtHdrFragment() / p[TCP]
            frags = fragment6(p, 120)
        out["fragments"] = len(frags)
        for f in frags:
            c.send(f)
    elif case == "urgent":
        # --attack holds the bytes on the wire, --urgent the offset of the
        # byte sent as urgent data: the urgent pointer points just past it
        # (Linux's reading), so a receiver without SO_OOBINLINE drops it.
        c.send(c.tcp("PAU", payload=attack, urgptr=a.urgent + 1))
    else:
        sys.exit(f"unknown case {case}")
    c.poll(3.0, until=lambda: c.fin)
    out["acked"] = c.server_acked
    out["answer"] = c.answer()[:200]
    c.close()
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--iface", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--dport", type=int, required=True)
    p.add_argument("--dmac", required=True, help="MAC of the server side's interface")
    p.add_argument("--case", required=True)
    p.add_argument("--attack", default="")
    p.add_argument("--benign", default="")
    p.add_argument("--urgent", type=int, default=0, help="offset of the urgent byte")
    p.add_argument("--syn-only", action="store_true", help="only the handshake")
    run(p.parse_args())


if __name__ == "__main__":
    main()
