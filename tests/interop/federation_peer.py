#!/usr/bin/env python3
"""An independent peer of Switchyard's federation protocol, standard library only.

Acts as the member provider `py.test` of a test federation: it serves its own Bloom filter
(`switchyard-bloom-v2`, full and incremental) and the Forward paths over HTTPS with mutual
TLS, and sends every Forward, filter pull and notification to one Switchyard provider.

    federation_peer.py CA_PEM CERT_PEM KEY_PEM PEER_URL PARAMS_JSON

PARAMS_JSON holds `provider-id` (this peer), `peer-id` and `peer-fingerprint` (the provider
at PEER_URL and the SHA-256 of its certificate, as the discovery dictionary lists it) and
`hosted` (the URIs this peer's filter starts with).

The driver (tests/tests/main/federation_interop.rs) sends one JSON command a line on stdin; each
gets one JSON line on stdout: `{"ok": true, "failures": [...], ...}` or `{"ok": false,
"error": ...}`. The first stdout line is `{"port": N}`. Every check that fails is recorded
(also when it fails in a request handler thread) and reported with the next answer; the
script exits 1 at `quit` when any check failed.
"""

import base64
import hashlib
import http.client
import http.server
import json
import plistlib
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import traceback
import urllib.parse

from bloom_check import ALGORITHM, Bloom, allowed_bits, decode_flips, encode_flips

PLIST = "application/x-plist"
JSON = "application/json"
# Fields carried as binary data: base64 strings in JSON.
DATA_FIELDS = {"caller-blob", "callee-blob", "attestation", "filter", "flips"}
FORWARD_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
TIMESTAMP_WINDOW = 300
REJECT_REASONS = {"busy", "declined", "unavailable", "unsupported-media", "not-authorized"}
CANCEL_REASONS = {"cancelled", "answered-elsewhere", "ended"}

LOCK = threading.Condition()
FAILURES = []
REPORTED = 0


def log(*args):
    print("[py.test]", *args, file=sys.stderr, flush=True)


def check(condition, message):
    if not condition:
        with LOCK:
            FAILURES.append(message)
        log("CHECK FAILED:", message)
    return condition


# ---------------------------------------------------------------- dictionaries on the wire


def encode(d, content_type):
    if content_type == JSON:
        def conv(v):
            if isinstance(v, (bytes, bytearray)):
                return base64.b64encode(bytes(v)).decode("ascii")
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v
        return json.dumps(conv(d)).encode("utf-8")
    return plistlib.dumps(d, fmt=plistlib.FMT_XML, sort_keys=False)


def decode(body, content_type):
    """A body in the given encoding; data fields come back as bytes either way."""
    if content_type == JSON:
        d = json.loads(body.decode("utf-8"))
        if not isinstance(d, dict):
            raise ValueError("top level is not a dictionary")
        for k in DATA_FIELDS & d.keys():
            d[k] = base64.b64decode(d[k], validate=True)
        return d
    d = plistlib.loads(body, fmt=plistlib.FMT_XML)
    if not isinstance(d, dict):
        raise ValueError("top level is not a dictionary")
    return d


def media_type(header):
    """What Switchyard's `Encoding::from_content_type` picks; None when unsupported."""
    if not header or not header.strip():
        return PLIST
    for part in header.split(","):
        t = part.split(";")[0].strip().lower()
        if t == JSON or t.endswith("+json"):
            return JSON
        if t in (PLIST, "application/xml", "text/xml", "*/*", "application/*"):
            return PLIST
    return None


# ---------------------------------------------------------------- Bloom filter
# The filter itself is bloom_check.py's independent implementation of switchyard-bloom-v2.


def validate_header(d):
    if d.get("algorithm") != ALGORITHM:
        raise ValueError(f"unsupported algorithm {d.get('algorithm')!r}")
    if not allowed_bits(d["bits"]):
        raise ValueError(f"invalid bit count {d['bits']}")
    for field in ("generation", "items"):
        if not isinstance(d[field], int) or d[field] < 0:
            raise ValueError(f"{field} must be a non-negative integer")
    return d["bits"]


def full_filter(d):
    bits = validate_header(d)
    if "flips" in d:
        raise ValueError("a full filter carries no flips")
    return Bloom(bits, bytes(d["filter"]), d["items"])


# ---------------------------------------------------------------- this peer's own filter


class OwnFilter:
    def __init__(self, uris):
        self.uris = list(uris)
        # Sized for more than it will hold, so adding a URI keeps the size.
        self.template = Bloom.sized(256, 0.001)
        self.history = []  # (generation, Bloom), newest last
        self.served = []  # (since, form, generation)
        self.rebuild()

    def rebuild(self):
        f = self.template.copy()
        for uri in self.uris:
            f.insert(uri)
        generation = max(int(time.time() * 1000), self.history[-1][0] + 1 if self.history else 0)
        self.history.append((generation, f))
        del self.history[:-8]
        return generation

    def current(self):
        return self.history[-1]

    def answer(self, since):
        generation, f = self.current()
        base = {"algorithm": ALGORITHM}
        older = None
        if since is not None:
            older = next((b for g, b in self.history if g == since), None)
        if older is not None and older.bits == f.bits:
            flipped = f.diff(older)
            rice_bits, flips = encode_flips(flipped)
            if len(flips) < f.bits // 8:
                d = dict(base, since=since, generation=generation, bits=f.bits, items=f.items,
                         **{"flip-count": len(flipped), "rice-bits": rice_bits}, flips=flips)
                return d, "incremental"
        d = dict(base, generation=generation, bits=f.bits, items=f.items, filter=bytes(f.bitmap))
        return d, "full"


# ---------------------------------------------------------------- state shared with handlers


class State:
    def __init__(self, params):
        self.me = params["provider-id"]
        self.peer_id = params["peer-id"]
        self.peer_fp = params["peer-fingerprint"].lower()
        self.own = OwnFilter(params["hosted"])
        self.received = []  # (action, dict, content type)
        self.notifications = []
        self.sent_initiates = {}  # sid -> body we sent as originator
        self.forward_ids = set()  # forward ids received from the peer
        self.answer_initiates = {"rung": 1}
        self.peer_filter = None  # (generation, Bloom)


STATE = None
CTX = {}


# ---------------------------------------------------------------- HTTPS server


def error_dict(code, message, field=None):
    d = {"error": code, "message": message}
    if field:
        d["field"] = field
    return d


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 300

    def log_message(self, fmt, *args):
        log("served:", fmt % args)

    def reply(self, status, d, content_type):
        body = encode(d, content_type)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_encoding(self):
        return media_type(self.headers.get("Content-Type")) or \
            media_type(self.headers.get("Accept")) or PLIST

    def authenticate(self):
        der = self.connection.getpeercert(binary_form=True)
        if der is None:
            self.reply(401, error_dict("certificate-required", "no client certificate"),
                       self.reply_encoding())
            return False
        fp = hashlib.sha256(der).hexdigest()
        if not check(fp == STATE.peer_fp,
                     f"a client presented certificate {fp}, not {STATE.peer_id}'s {STATE.peer_fp}"):
            self.reply(403, error_dict("certificate-mismatch", "not the listed certificate"),
                       self.reply_encoding())
            return False
        return True

    def do_GET(self):
        if not self.authenticate():
            return
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/federation/v1/bloom":
            self.reply(404, error_dict("not-found", "no such path"), self.reply_encoding())
            return
        query = urllib.parse.parse_qs(url.query)
        since = None
        if "since" in query:
            try:
                since = int(query["since"][0])
            except ValueError:
                self.reply(400, error_dict("invalid-field", "since", "since"), self.reply_encoding())
                return
        with LOCK:
            d, form = STATE.own.answer(since)
            STATE.own.served.append({"since": since, "form": form, "generation": d["generation"]})
            LOCK.notify_all()
        log(f"filter served to {STATE.peer_id}: {form} (since {since}) generation {d['generation']}")
        self.reply(200, d, self.reply_encoding())

    def do_POST(self):
        if not self.authenticate():
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        content_type = media_type(self.headers.get("Content-Type"))
        if content_type is None:
            self.reply(415, error_dict("unsupported-media-type", "use plist or JSON"),
                       self.reply_encoding())
            return
        try:
            d = decode(body, content_type)
        except Exception as e:  # noqa: BLE001 - any decoding failure is a malformed body
            check(False, f"{STATE.peer_id} sent an undecodable body to {self.path}: {e}")
            self.reply(400, error_dict("malformed-body", str(e)), content_type)
            return
        action = self.path.rsplit("/", 1)[-1]
        try:
            status, answer = self.handle_action(action, d)
        except KeyError as e:
            check(False, f"{action} from {STATE.peer_id} lacks field {e}")
            status, answer = 400, error_dict("missing-field", f"missing {e}", str(e.args[0]))
        except Exception as e:  # noqa: BLE001
            check(False, f"handling {action}: {traceback.format_exc()}")
            status, answer = 500, error_dict("internal", str(e))
        self.reply(status, answer, content_type)
        with LOCK:
            STATE.received.append((action, d, content_type, status))
            LOCK.notify_all()

    def check_envelope(self, action, d):
        sid = d["session-id"]
        check(isinstance(sid, str) and 8 <= len(sid) <= 128, f"{action}: session-id {sid!r}")
        ts = d["timestamp"]
        check(isinstance(ts, int) and abs(time.time() - ts) <= TIMESTAMP_WINDOW,
              f"{action}: timestamp {ts!r} outside the window")
        fid = d["forward-id"]
        check(isinstance(fid, str) and FORWARD_ID.match(fid), f"{action}: forward-id {fid!r}")
        with LOCK:
            check(fid not in STATE.forward_ids, f"{action}: forward-id {fid} reused")
            STATE.forward_ids.add(fid)
        return sid

    def handle_action(self, action, d):
        me, peer = STATE.me, STATE.peer_id
        if action == "notify":
            check(d["provider-id"] == peer, f"notify names {d['provider-id']!r}")
            check(isinstance(d["generation"], int) and d["generation"] >= 0,
                  f"notify generation {d['generation']!r}")
            with LOCK:
                STATE.notifications.append(d["generation"])
            return 200, {"provider-id": me}
        sid = self.check_envelope(action, d)
        if action == "initiate":
            check(d["originating-provider"] == peer, f"initiate from {d['originating-provider']!r}")
            check(isinstance(d["origin-state"], str) and d["origin-state"], "initiate: origin-state")
            for f in ("caller-uri", "callee-uri", "caller-token"):
                check(isinstance(d[f], str) and d[f], f"initiate: {f} {d[f]!r}")
            check(isinstance(d["caller-blob"], bytes), "initiate: caller-blob is not data")
            caps = d["caller-capabilities"]
            check(isinstance(caps.get("audio"), bool) and isinstance(caps.get("video"), bool),
                  f"initiate: capabilities {caps!r}")
            for f in ("audio-codecs", "video-codecs"):
                check(isinstance(caps.get(f), list) and all(isinstance(c, str) for c in caps[f]),
                      f"initiate: capabilities {f}")
            check(d["media"] and set(d["media"]) <= {"audio", "video"}, f"initiate media {d['media']!r}")
            check(d["ring-deadline"] > time.time() * 1000, "initiate: ring-deadline has passed")
            # ECDSA cannot be verified with the standard library: only its presence is checked.
            check(isinstance(d.get("attestation"), bytes) and len(d["attestation"]) > 0,
                  "initiate: attestation missing")
            with LOCK:
                hosted = STATE.own.current()[1].contains(d["callee-uri"])
                check(d["callee-uri"] in STATE.own.uris,
                      f"initiate for {d['callee-uri']!r}, which this peer does not host")
            check(hosted, "initiate for a URI not in this peer's filter")
            answer = {"session-id": sid, "answering-provider": me}
            answer.update(STATE.answer_initiates)
            return 200, answer
        if action in ("accept", "reject"):
            check(d["answering-provider"] == peer, f"{action} from {d['answering-provider']!r}")
            sent = STATE.sent_initiates.get(sid)
            if not check(sent is not None, f"{action} for session {sid} this peer never started"):
                return 404, error_dict("unknown-session", "no such call")
            check(d["origin-state"] == sent["origin-state"],
                  f"{action}: origin-state {d['origin-state']!r} is not the one sent")
            if action == "accept":
                check(d["callee-uri"] == sent["callee-uri"], f"accept: callee-uri {d['callee-uri']!r}")
                check(isinstance(d["callee-token"], str) and d["callee-token"], "accept: callee-token")
                check(isinstance(d["callee-blob"], bytes), "accept: callee-blob is not data")
            else:
                check(d["reason"] in REJECT_REASONS, f"reject reason {d['reason']!r}")
                check(isinstance(d.get("reason-text", ""), str), "reject: reason-text")
            return 200, {"session-id": sid}
        if action == "cancel":
            check(d["from-provider"] == peer, f"cancel from {d['from-provider']!r}")
            check(d["reason"] in CANCEL_REASONS, f"cancel reason {d['reason']!r}")
            if "origin-state" in d:
                sent = STATE.sent_initiates.get(sid)
                check(sent is not None and d["origin-state"] == sent["origin-state"],
                      "cancel: origin-state is not the one sent")
            return 200, {"session-id": sid}
        return 404, error_dict("not-found", "no such federation path")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        sock, addr = self.socket.accept()
        # The handshake runs in the handler's thread, on first read.
        return CTX["server"].wrap_socket(sock, server_side=True,
                                         do_handshake_on_connect=False), addr


# ---------------------------------------------------------------- client side


def request(method, path, d=None, content_type=JSON, accept=None, raw=None, client_cert=True):
    """One request to the peer; returns (status, answer dict, answer content type)."""
    url = urllib.parse.urlsplit(CTX["peer_url"])
    ctx = CTX["client"] if client_cert else CTX["anonymous"]
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=10)
    try:
        conn.connect()
        fp = hashlib.sha256(conn.sock.getpeercert(binary_form=True)).hexdigest()
        check(fp == STATE.peer_fp, f"{STATE.peer_id} presented {fp}, not {STATE.peer_fp}")
        headers = {"Accept": accept or content_type}
        body = raw if raw is not None else (encode(d, content_type) if d is not None else None)
        if body is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        answer_type = response.getheader("Content-Type")
        try:
            answer = decode(data, media_type(answer_type))
        except Exception as e:  # noqa: BLE001
            answer = None
            check(False, f"{method} {path}: answer ({answer_type}) is not a dictionary: {e} {data[:200]!r}")
        return response.status, answer, answer_type
    finally:
        conn.close()


def envelope(sid):
    return {"session-id": sid, "timestamp": int(time.time()),
            "forward-id": secrets.token_urlsafe(24)}


def forward(action, d, content_type, expect_status=200):
    status, answer, answer_type = request("POST", f"/federation/v1/{action}", d, content_type)
    check(status == expect_status, f"{action}: HTTP {status} {answer!r}, expected {expect_status}")
    check(media_type(answer_type) == content_type,
          f"{action}: answered in {answer_type}, asked in {content_type}")
    return status, answer


def expect_error(label, status, answer, want_status, want_code, want_field=None):
    ok = check(status == want_status and isinstance(answer, dict) and answer.get("error") == want_code,
               f"{label}: got HTTP {status} {answer!r}, expected {want_status} {want_code}")
    if want_field is not None:
        ok = check(isinstance(answer, dict) and answer.get("field") == want_field,
                   f"{label}: error names field {answer and answer.get('field')!r}, expected {want_field!r}") and ok
    if ok:
        check(isinstance(answer.get("message"), str) and answer["message"], f"{label}: no message")
        log(f"{label}: HTTP {status} {want_code} as expected")


# ---------------------------------------------------------------- commands


def pull(since=None, accept=PLIST):
    path = "/federation/v1/bloom" + (f"?since={since}" if since is not None else "")
    status, d, answer_type = request("GET", path, accept=accept)
    if not check(status == 200, f"GET {path}: HTTP {status} {d!r}"):
        raise RuntimeError(f"pull failed: {status}")
    check(media_type(answer_type) == accept, f"GET {path}: answered in {answer_type}, asked {accept}")
    return d


def cmd_pull_full(c):
    accept = c.get("encoding", PLIST)
    d = pull(accept=accept)
    f = full_filter(d)
    STATE.peer_filter = (d["generation"], f)
    log(f"pulled {STATE.peer_id}'s full filter: generation {d['generation']}, {f.bits} bits, "
        f"{f.items} items")
    return {"generation": d["generation"], "bits": f.bits, "items": f.items}


def cmd_pull_since(c):
    held_generation, held = STATE.peer_filter
    d = pull(since=held_generation, accept=c.get("encoding", PLIST))
    if "flips" in d:
        form = "incremental"
        bits = validate_header(d)
        check("filter" not in d, "an incremental update also carries `filter`")
        check(d["since"] == held_generation, f"update since {d['since']}, asked since {held_generation}")
        check(bits == held.bits, "incremental update of another size")
        positions = decode_flips(bytes(d["flips"]), d["flip-count"], d["rice-bits"], bits)
        check(len(d["flips"]) < bits // 8, "incremental update not smaller than the full filter")
        updated = held.copy()
        updated.flip(positions)
        updated.items = d["items"]
        log(f"applied {len(positions)} flips ({len(d['flips'])} bytes) since {held_generation}")
    else:
        form = "full"
        updated = full_filter(d)
        positions = []
        log(f"asked since {held_generation}, got the full filter")
    check(d["generation"] > held_generation, f"generation {d['generation']} not after {held_generation}")
    # The incremental result must be the filter the peer now publishes in full (JSON this time).
    full = full_filter(pull(accept=JSON))
    check(full.bits == updated.bits and full.bitmap == updated.bitmap and full.items == updated.items,
          "the filter after applying the update differs from the full filter")
    STATE.peer_filter = (d["generation"], updated)
    return {"form": form, "since": held_generation, "generation": d["generation"], "flips": len(positions)}


def cmd_probe(c):
    generation, f = STATE.peer_filter
    membership = {uri: f.contains(uri) for uri in c["uris"]}
    for uri in c.get("hosted", []):
        check(membership.get(uri) is True, f"hosted URI {uri} is not in {STATE.peer_id}'s filter")
    present = sum(membership.values())
    log(f"probed {len(membership)} URIs against generation {generation}: {present} present")
    return {"generation": generation, "membership": membership}


def cmd_host(c):
    with LOCK:
        STATE.own.uris.append(c["uri"])
        generation = STATE.own.rebuild()
    log(f"now hosting {c['uri']}: own filter generation {generation}")
    return {"generation": generation}


def cmd_notify(c):
    content_type = c.get("encoding", PLIST)
    generation = STATE.own.current()[0]
    status, answer = forward("bloom/notify", {"provider-id": STATE.me, "generation": generation},
                             content_type)
    check(answer == {"provider-id": STATE.peer_id}, f"notify answer {answer!r}")
    log(f"notified {STATE.peer_id} of generation {generation}")
    return {"generation": generation}


def wait_for(predicate, what, timeout=10):
    deadline = time.time() + timeout
    with LOCK:
        while True:
            found = predicate()
            if found is not None:
                return found
            left = deadline - time.time()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {what}")
            LOCK.wait(left)


def cmd_wait_served(c):
    def find():
        for s in STATE.own.served:
            if s["since"] == c.get("since") and s["generation"] == c["generation"]:
                return s
        return None
    return wait_for(find, f"a filter pull answered with generation {c['generation']}")


def cmd_wait_notified(c):
    return {"generation": wait_for(
        lambda: c["generation"] if c["generation"] in STATE.notifications else None,
        f"a notification of generation {c['generation']}")}


def cmd_wait_forward(c):
    def find():
        for action, d, content_type, status in STATE.received:
            if action == c["action"] and d.get("session-id") == c["session-id"]:
                return action, d, content_type, status
        return None
    action, d, content_type, status = wait_for(find, f"a {c['action']} Forward for {c['session-id']}")
    out = {"encoding": content_type, "status": status}
    for k, v in d.items():
        out[k] = v.hex() if isinstance(v, bytes) else v
    log(f"received {action} Forward for {c['session-id']} ({content_type})")
    return out


def initiate_body(c, sid):
    return dict(envelope(sid), **{
        "originating-provider": STATE.me,
        "origin-state": "py-origin-" + secrets.token_hex(12),
        "caller-uri": c["caller"],
        "caller-token": c["token"],
        "callee-uri": c["callee"],
        "caller-blob": c["blob"].encode(),
        "caller-capabilities": {"audio": True, "video": True,
                                "audio-codecs": ["opus", "PCMU"], "video-codecs": ["VP8"]},
        "media": c.get("media", ["audio"]),
        "ring-deadline": int(time.time() * 1000) + 30_000,
    })


def cmd_initiate(c):
    content_type = c.get("encoding", JSON)
    sid = c.get("session-id") or "py-" + secrets.token_hex(12)
    body = initiate_body(c, sid)
    STATE.sent_initiates[sid] = body
    status, answer = forward("initiate", body, content_type)
    check(answer.get("session-id") == sid, f"initiate answer names {answer.get('session-id')!r}")
    check(answer.get("answering-provider") == STATE.peer_id, f"answering-provider {answer!r}")
    check(answer.get("rung") == c.get("rung", 1), f"rung {answer.get('rung')!r}")
    log(f"Initiate {sid} ({content_type}) to {c['callee']}: rung {answer.get('rung')}")
    if c.get("replay-checks"):
        # The same Forward again (same forward-id): refused as a replay.
        status, again, _ = request("POST", "/federation/v1/initiate", body, content_type)
        expect_error("replayed forward-id", status, again, 409, "replayed-forward")
        # A retry (same session and action, fresh forward-id): the same answer, nothing rung twice.
        retry = dict(body, **envelope(sid))
        status, second = forward("initiate", retry, content_type)
        if check(second == answer, f"a retried Initiate got {second!r}, first {answer!r}"):
            log("retried Initiate (fresh forward-id): the same answer as expected")
    return {"session-id": sid, "answer": answer, "origin-state": body["origin-state"]}


def received_initiate(sid):
    with LOCK:
        for action, d, _, status in STATE.received:
            if action == "initiate" and d["session-id"] == sid and status == 200:
                return d
    raise RuntimeError(f"no Initiate Forward for {sid} was received")


def cmd_accept(c):
    sid = c["session-id"]
    got = received_initiate(sid)
    content_type = c.get("encoding", PLIST)
    body = dict(envelope(sid), **{
        "answering-provider": STATE.me,
        "origin-state": got["origin-state"],
        "callee-uri": got["callee-uri"],
        "callee-token": c["token"],
        "callee-blob": c["blob"].encode(),
    })
    status, answer = forward("accept", body, content_type)
    check(answer == {"session-id": sid}, f"accept answer {answer!r}")
    log(f"Accept {sid} sent ({content_type})")
    if c.get("tamper-checks"):
        forged = dict(body, **envelope(sid))
        forged["origin-state"] = got["origin-state"][:-4] + "AAAA"
        status, answer, _ = request("POST", "/federation/v1/accept", forged, content_type)
        expect_error("forged origin-state", status, answer, 400, "invalid-field", "origin-state")
    return {"answer": answer}


def cmd_reject(c):
    sid = c["session-id"]
    got = received_initiate(sid)
    content_type = c.get("encoding", PLIST)
    body = dict(envelope(sid), **{
        "answering-provider": STATE.me,
        "origin-state": got["origin-state"],
        "reason": c["reason"],
        "reason-text": c["text"],
    })
    status, answer = forward("reject", body, content_type)
    check(answer.get("session-id") == sid and answer.get("remaining") == 0, f"reject answer {answer!r}")
    log(f"Reject {sid} ({c['reason']}) sent ({content_type})")
    return {"answer": answer}


def cmd_cancel(c):
    sid = c["session-id"]
    content_type = c.get("encoding", PLIST)
    body = dict(envelope(sid), **{"from-provider": STATE.me, "reason": c["reason"]})
    if c.get("as-answerer"):
        body["origin-state"] = received_initiate(sid)["origin-state"]
    status, answer = forward("cancel", body, content_type)
    check(answer == {"session-id": sid}, f"cancel answer {answer!r}")
    log(f"Cancel {sid} ({c['reason']}) sent ({content_type})")
    return {"answer": answer}


def cmd_errors(c):
    """Forwards the peer must refuse, each with a dictionary error body."""
    base = {"caller": c["caller"], "token": "py-token", "callee": c["callee"], "blob": "x"}
    for content_type in (PLIST, JSON):
        label = "plist" if content_type == PLIST else "json"
        for offset in (-3600, 3600):
            body = initiate_body(base, "py-" + secrets.token_hex(12))
            body["timestamp"] = int(time.time()) + offset
            status, answer, _ = request("POST", "/federation/v1/initiate", body, content_type)
            expect_error(f"{label} stale timestamp ({offset:+} s)", status, answer, 403, "stale-forward")
        body = initiate_body(base, "py-" + secrets.token_hex(12))
        del body["caller-token"]
        status, answer, _ = request("POST", "/federation/v1/initiate", body, content_type)
        expect_error(f"{label} missing caller-token", status, answer, 400, "missing-field", "caller-token")
        body = dict(envelope("py-" + secrets.token_hex(12)), **{"from-provider": STATE.me})
        status, answer, _ = request("POST", "/federation/v1/cancel", body, content_type)
        expect_error(f"{label} cancel without reason", status, answer, 400, "missing-field", "reason")
        body = initiate_body(base, "py-" + secrets.token_hex(12))
        body["forward-id"] = "short"
        status, answer, _ = request("POST", "/federation/v1/initiate", body, content_type)
        expect_error(f"{label} bad forward-id", status, answer, 400, "invalid-field", "forward-id")
        body = initiate_body(base, "py-" + secrets.token_hex(12))
        body["originating-provider"] = STATE.peer_id
        status, answer, _ = request("POST", "/federation/v1/initiate", body, content_type)
        expect_error(f"{label} provider mismatch", status, answer, 403, "provider-mismatch")
        body = initiate_body(dict(base, callee=c["nowhere"]), "py-" + secrets.token_hex(12))
        status, answer, _ = request("POST", "/federation/v1/initiate", body, content_type)
        expect_error(f"{label} callee not hosted", status, answer, 404, "unknown-peer")
        malformed = b'{"session-id": "abc' if content_type == JSON else b"<?xml version=\"1.0\"?><plist><dict><key>a"
        status, answer, answer_type = request("POST", "/federation/v1/initiate", raw=malformed,
                                              content_type=content_type)
        expect_error(f"{label} malformed body", status, answer, 400, "malformed-body")
        check(media_type(answer_type) == content_type, f"{label} malformed: error in {answer_type}")
    status, answer, answer_type = request("POST", "/federation/v1/initiate", raw=b"hello",
                                          content_type="text/plain", accept=JSON)
    expect_error("unsupported media type", status, answer, 415, "unsupported-media-type")
    check(media_type(answer_type) == JSON, f"unsupported media type: error in {answer_type}")
    status, answer, _ = request("POST", "/federation/v1/nonsense", {}, PLIST)
    expect_error("unknown path", status, answer, 404, "not-found")
    status, answer, _ = request("GET", "/federation/v1/bloom?since=soon", accept=JSON)
    expect_error("bad since", status, answer, 400, "invalid-field", "since")
    # Without a client certificate the peer must not answer at all.
    try:
        status, answer, _ = request("GET", "/federation/v1/bloom", client_cert=False)
        check(False, f"a request without a client certificate got HTTP {status}")
    except (ssl.SSLError, ConnectionError, OSError, http.client.HTTPException) as e:
        log(f"no client certificate: refused ({type(e).__name__})")
    return {}


COMMANDS = {
    "pull-full": cmd_pull_full,
    "pull-since": cmd_pull_since,
    "probe": cmd_probe,
    "host": cmd_host,
    "notify": cmd_notify,
    "wait-served": cmd_wait_served,
    "wait-notified": cmd_wait_notified,
    "wait-forward": cmd_wait_forward,
    "initiate": cmd_initiate,
    "accept": cmd_accept,
    "reject": cmd_reject,
    "cancel": cmd_cancel,
    "errors": cmd_errors,
}


def main():
    global STATE, REPORTED
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    ca, cert, key, peer_url, params_path = sys.argv[1:]
    with open(params_path, encoding="utf-8") as f:
        params = json.load(f)
    STATE = State(params)
    CTX["peer_url"] = peer_url

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.load_verify_locations(ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    CTX["server"] = server_ctx
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(ca)
    client_ctx.load_cert_chain(cert, key)
    CTX["client"] = client_ctx
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(ca)
    CTX["anonymous"] = anonymous

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1],
                      "generation": STATE.own.current()[0]}), flush=True)

    for line in sys.stdin:
        if not line.strip():
            continue
        c = json.loads(line)
        if c["cmd"] == "quit":
            break
        if c["cmd"] == "answer-initiates":
            STATE.answer_initiates = c["answer"]
            out = {"ok": True}
        else:
            try:
                out = dict(COMMANDS[c["cmd"]](c), ok=True)
            except Exception as e:  # noqa: BLE001 - reported to the driver
                log(f"command {c['cmd']} failed:", traceback.format_exc())
                out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        with LOCK:
            out["failures"] = FAILURES[REPORTED:]
            REPORTED = len(FAILURES)
        print(json.dumps(out), flush=True)

    server.shutdown()
    if FAILURES:
        log(f"{len(FAILURES)} check(s) failed:")
        for failure in FAILURES:
            log("  -", failure)
        sys.exit(1)
    log("every check passed")


if __name__ == "__main__":
    main()
