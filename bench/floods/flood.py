#!/usr/bin/env python3
"""One flood against one listener of a provider on loopback, for a bounded time, from a source
address of its own (so the legitimate clients on 127.0.0.1 are other clients to the provider).

    flood.py MODE HOST:PORT SECONDS [SOURCE, default 127.0.0.2]

MODE:
  slow-headers   TCP connections that send half a request header and stop; reopened when closed
  idle           TCP connections that send nothing; reopened when closed
  tls-idle       as idle (a TLS listener waiting for a ClientHello)
  invites        unauthenticated SIP INVITEs over UDP, as fast as one socket sends them
  allocates      unauthenticated TURN Allocate requests over UDP, as fast as one socket sends them
  sip-nonreader  SIP OPTIONS over one TCP connection after another, never reading an answer

Prints one line of JSON: what it sent and how many connections it held at most.
"""
import json
import os
import selectors
import socket
import struct
import sys
import time

MAX_CONNECTIONS = 2000


def tcp_hold(target, seconds, source, first_bytes):
    """Holds as many connections as the server keeps, up to MAX_CONNECTIONS."""
    sel = selectors.DefaultSelector()
    opened = closed = held_max = 0
    held = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while len(held) < MAX_CONNECTIONS:
            s = socket.socket()
            s.setblocking(False)
            s.bind((source, 0))
            try:
                s.connect(target)
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                break
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, "new")
            held.add(s)
            opened += 1
        held_max = max(held_max, len(held))
        for key, events in sel.select(timeout=0.2):
            s = key.fileobj
            if key.data == "new" and events & selectors.EVENT_WRITE:
                try:
                    if first_bytes:
                        s.send(first_bytes)
                except OSError:
                    pass
                sel.modify(s, selectors.EVENT_READ, "open")
            elif events & selectors.EVENT_READ:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    held.discard(s)
                    s.close()
                    closed += 1
    for s in held:
        s.close()
    return {"opened": opened, "closed_by_server": closed, "held_max": held_max}


def invite(n, port):
    call = f"flood-{os.getpid()}-{n}"
    return (f"INVITE sip:bench-callee@bench.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bK{call}\r\n"
            f"From: <sip:flood@bench.test>;tag={n}\r\nTo: <sip:bench-callee@bench.test>\r\n"
            f"Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@127.0.0.2:{port}>\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def allocate(n):
    # STUN header (Allocate request 0x0003, magic cookie, transaction id), then
    # REQUESTED-TRANSPORT (UDP), no USERNAME and no MESSAGE-INTEGRITY.
    transaction = struct.pack(">IQ", os.getpid() & 0xFFFFFFFF, n)
    attribute = struct.pack(">HHB3x", 0x0019, 4, 17)
    return struct.pack(">HHI", 0x0003, len(attribute), 0x2112A442) + transaction + attribute


def udp_flood(target, seconds, source, message):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.setblocking(False)
    port = s.getsockname()[1]
    sent = answers = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):
            try:
                s.sendto(message(sent, port), target)
                sent += 1
            except (BlockingIOError, OSError):
                break
        try:
            while True:
                s.recv(65535)
                answers += 1
        except (BlockingIOError, OSError):
            pass
        time.sleep(0.0005)
    return {"sent": sent, "answers": answers}


def sip_nonreader(target, seconds, source):
    sent = connections = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.socket()
        s.bind((source, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.connect(target)
        except OSError:
            time.sleep(0.1)
            continue
        connections += 1
        s.settimeout(1)
        try:
            while time.monotonic() < end:
                n = sent
                s.sendall((f"OPTIONS sip:bench.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2;branch=z9hG4bK{os.getpid()}x{n}\r\n"
                           f"From: <sip:flood@bench.test>;tag={n}\r\nTo: <sip:bench.test>\r\nCall-ID: nr-{n}\r\n"
                           "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
                sent += 1
        except OSError:
            pass
        s.close()
    return {"sent": sent, "connections": connections}


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    mode, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    source = sys.argv[4] if len(sys.argv) == 5 else "127.0.0.2"
    host, port = target.rsplit(":", 1)
    target = (host, int(port))
    if mode == "slow-headers":
        out = tcp_hold(target, seconds, source, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    elif mode in ("idle", "tls-idle"):
        out = tcp_hold(target, seconds, source, b"")
    elif mode == "invites":
        out = udp_flood(target, seconds, source, invite)
    elif mode == "allocates":
        out = udp_flood(target, seconds, source, lambda n, _port: allocate(n))
    elif mode == "sip-nonreader":
        out = sip_nonreader(target, seconds, source)
    else:
        sys.exit(f"unknown mode {mode}\n{__doc__}")
    print(json.dumps(dict(out, mode=mode)))


if __name__ == "__main__":
    main()
