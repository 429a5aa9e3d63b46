"""Local stand-ins for the peers wahook delivers to, started by the integration suites on
127.0.0.1 (Python 3 standard library only):

  EvolutionStandin  Evolution API v2: POST /message/sendText/{instance} and
                    GET /instance/connectionState/{instance} (reference evolution-api.md §6)
  TwentyStandin     Twenty CRM REST: Bearer auth, /rest/<plural>[/<uuid>] path rules, phone
                    normalisation on write, the filter grammar, ?upsert=true, the two
                    noteTarget/taskTarget link-field names, 429 after N requests per sliding
                    window (reference twenty-crm.md)
  SmtpSink          an SMTP server (EHLO/HELO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA, RSET, NOOP,
                    QUIT) that keeps every mail, parsed with the email package, attachments kept
  AlertSink         an HTTP server recording every POSTed JSON body

Each starts on a free loopback port in its own thread (start()), stops with stop(), records what
it received (thread-safe snapshots) and has control knobs, set either from Python
(configure(**knobs), down(), up()) or over HTTP on its always-up control port
(POST /_control with the same knobs as JSON, GET /_calls, GET /_state). Every delay and hold is
bounded (MAX_HOLD_S) and interrupted by stop().

The bottom of the file holds helpers the delivery suites share (config snippets, a scripts
directory with the CRM modules, bounded waits on the outbox).

Run this file by hand for its self-test:  python3 tests/integration/standins.py
"""

import base64
import binascii
import collections
import copy
import datetime
import email
import email.policy
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
import uuid

LOOPBACK = "127.0.0.1"
MAX_HOLD_S = 120.0      # no delay or hang lasts longer than this
MAX_BODY = 32 << 20     # request bodies and mails larger than this are refused


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _jbytes(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def max_in_window(times, window_s):
    """The largest number of timestamps (seconds, any monotonic clock) in any window of
    window_s seconds (closed at both ends would overcount a request sitting exactly on the
    edge; the window here is [t, t + window_s))."""
    ts = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(ts):
        while ts[j] <= t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


# ---------------------------------------------------------------------------------------------
# HTTP base: a threaded HTTP/1.1 server (keep-alive) whose requests go to a stand-in object


def _quiet_handle_error(self, request, client_address):
    """A peer that went away (the server under test killed or timing out) is normal here; any
    other error in a handler thread is still printed."""
    exc = sys.exc_info()[1]
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
        return
    socketserver.BaseServer.handle_error(self, request, client_address)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    handle_error = _quiet_handle_error


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin = None        # set on the per-server subclass
    control_only = False  # the control port answers /_control, /_calls, /_state only
    timeout = 60          # idle keep-alive connections are closed after this

    def log_message(self, fmt, *args):  # noqa: D401 - quiet
        pass

    def setup(self):
        super().setup()
        if not self.control_only:
            self.standin._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            if not self.control_only:
                self.standin._track(self.connection, False)

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts = []
            total = 0
            for _ in range(100000):
                line = self.rfile.readline(1024)
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers up to the blank line
                    for _ in range(100):
                        t = self.rfile.readline(8192)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(8)
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n > 0 else b""

    def _dispatch(self):
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        split = urllib.parse.urlsplit(self.path)
        path, query = split.path, split.query
        if path in ("/_control", "/_calls", "/_state"):
            reply = self.standin._control_request(self.command, path, body)
        elif self.control_only:
            reply = (404, {}, _jbytes({"error": "control port: /_control, /_calls, /_state"}))
        else:
            reply = self.standin._handle(self.command, path, query, headers, body, self)
        if reply is None:
            # answer nothing: the peer sees the connection closed ("died mid-request")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        status, rh, data = reply
        try:
            self.send_response(status)
            has_ct = False
            for k, v in rh.items():
                self.send_header(k, v)
                has_ct = has_ct or k.lower() == "content-type"
            if not has_ct:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            # the client gave up (its timeout) or the stand-in was taken down
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class HttpStandin:
    """Base of the HTTP stand-ins: lifecycle, the go-away switch, the call log and knobs.

    Subclasses implement handle(call) -> (status, headers, body bytes) or None (close the
    connection without an answer). `call` is a dict recorded in self.calls at arrival:
    {n, method, path, query (dict of lists), raw_query, headers (lower-case), body (bytes),
    json (decoded or None), t (monotonic arrival), wall, status (filled once answered; None if
    the connection was dropped), answered_t}."""

    name = "standin"
    KNOBS = ("fail_next", "fail_status", "delay_ms", "down")

    def __init__(self):
        self.lock = threading.RLock()
        self.port = 0
        self.ctl_port = 0
        self.calls = []
        self.fail_next = 0
        self.fail_status = 500
        self.fail_retry_after = None
        self.delay_ms = 0
        self.is_down = False
        self._srv = None
        self._thread = None
        self._ctl = None
        self._ctl_thread = None
        self._conns = set()
        self._stopping = threading.Event()
        self._release = threading.Event()  # ends every current hang

    # -- lifecycle

    def start(self):
        self._bind()
        handler = type(self.name + "Control", (_Handler,), {"standin": self, "control_only": True})
        self._ctl = _HTTPServer((LOOPBACK, 0), handler)
        self.ctl_port = self._ctl.server_address[1]
        self._ctl_thread = threading.Thread(target=self._ctl.serve_forever,
                                            kwargs={"poll_interval": 0.05}, daemon=True,
                                            name=self.name + "-ctl")
        self._ctl_thread.start()
        return self

    def _bind(self):
        handler = type(self.name + "Handler", (_Handler,), {"standin": self})
        last = None
        for _ in range(100):  # rebinding the same port right after close can race; ~5 s
            try:
                srv = _HTTPServer((LOOPBACK, self.port), handler)
                break
            except OSError as e:
                last = e
                time.sleep(0.05)
        else:
            raise OSError("%s: cannot bind 127.0.0.1:%d: %s" % (self.name, self.port, last))
        self.port = srv.server_address[1]
        self._srv = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=self.name)
        self._thread.start()

    def _unbind(self):
        srv, self._srv = self._srv, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, conn, add):
        with self.lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def stop(self):
        self._stopping.set()
        self._release.set()
        self._unbind()
        ctl, self._ctl = self._ctl, None
        if ctl is not None:
            ctl.shutdown()
            ctl.server_close()

    def down(self):
        """Go away: close the listening socket and every open connection; connects are refused
        until up()."""
        with self.lock:
            if self.is_down:
                return
            self.is_down = True
        self._unbind()

    def up(self):
        with self.lock:
            if not self.is_down:
                return
            self.is_down = False
        self._bind()

    def release(self):
        """Ends every request currently held by a hang (they close without an answer)."""
        self._release.set()
        time.sleep(0.05)
        self._release = threading.Event()

    @property
    def url(self):
        return "http://%s:%d" % (LOOPBACK, self.port)

    @property
    def control_url(self):
        return "http://%s:%d" % (LOOPBACK, self.ctl_port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- knobs

    def configure(self, **knobs):
        for k, v in knobs.items():
            if k not in self.KNOBS:
                raise ValueError("%s: unknown knob %r (known: %s)" % (self.name, k,
                                                                      ", ".join(self.KNOBS)))
            if k == "down":
                (self.down if v else self.up)()
                continue
            setter = getattr(self, "_set_" + k, None)
            with self.lock:
                if setter is not None:
                    setter(v)
                else:
                    setattr(self, k, v)
        return self

    def _control_request(self, method, path, body):
        if path == "/_control" and method == "POST":
            try:
                knobs = json.loads(body.decode("utf-8") or "{}")
                if not isinstance(knobs, dict):
                    raise ValueError("a JSON object of knobs")
                # going down from a request thread would wait on itself; do it aside
                down = knobs.pop("down", None)
                self.configure(**knobs)
                if down is not None:
                    threading.Thread(target=self.configure, kwargs={"down": down},
                                     daemon=True).start()
            except (ValueError, TypeError) as e:
                return 400, {}, _jbytes({"error": str(e)})
            return 200, {}, _jbytes({"ok": True})
        if path == "/_calls" and method == "GET":
            return 200, {}, _jbytes([self._call_public(c) for c in self.snapshot()])
        if path == "/_state" and method == "GET":
            return 200, {}, _jbytes(self.describe())
        return 405, {}, _jbytes({"error": "method not allowed"})

    def describe(self):
        return {"calls": len(self.calls), "down": self.is_down}

    @staticmethod
    def _call_public(c):
        d = {k: v for k, v in c.items() if k not in ("body", "handler")}
        d["body"] = c["body"].decode("utf-8", "replace")
        return d

    # -- requests

    def _handle(self, method, path, raw_query, headers, body, handler):
        try:
            obj = json.loads(body.decode("utf-8")) if body else None
        except (ValueError, UnicodeDecodeError):
            obj = None
        call = {"method": method, "path": path, "raw_query": raw_query,
                "query": urllib.parse.parse_qs(raw_query, keep_blank_values=True),
                "headers": headers, "body": body, "json": obj, "t": time.monotonic(),
                "wall": time.time(), "status": None, "answered_t": None}
        with self.lock:
            call["n"] = len(self.calls)
            self.calls.append(call)
        try:
            reply = self.handle(call)
        except Exception as e:  # noqa: BLE001 - a stand-in bug must be visible, not a hang
            sys.stderr.write("%s: handler error on %s %s: %r\n" % (self.name, method, path, e))
            reply = (599, {}, _jbytes({"error": "stand-in bug: %r" % e}))
        with self.lock:
            call["status"] = None if reply is None else reply[0]
            call["answered_t"] = time.monotonic()
        return reply

    def handle(self, call):
        raise NotImplementedError

    def hold(self, ms):
        """Sleeps ms (bounded), returning early when the stand-in stops. True if it slept fully."""
        s = min(max(ms, 0) / 1000.0, MAX_HOLD_S)
        return not self._stopping.wait(s) if s > 0 else True

    def hang(self, max_s=MAX_HOLD_S):
        """Holds the request until release() or stop() (at most max_s)."""
        ev = self._release
        end = time.monotonic() + min(max_s, MAX_HOLD_S)
        for _ in range(int(MAX_HOLD_S / 0.05) + 10):
            if ev.is_set() or self._stopping.is_set() or time.monotonic() >= end:
                return
            ev.wait(0.05)

    def take_failure(self):
        """Consumes one of fail_next; returns the status to fail with or None."""
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return self.fail_status
        return None

    # -- reading what was recorded

    def snapshot(self, pred=None):
        with self.lock:
            calls = list(self.calls)
        return [c for c in calls if pred is None or pred(c)]

    def count(self, pred=None):
        return len(self.snapshot(pred))

    def clear(self):
        with self.lock:
            self.calls = []

    def wait_until(self, fn, timeout, what, interval=0.02):
        """Calls fn() until truthy or timeout; returns its value or raises AssertionError."""
        deadline = time.monotonic() + timeout
        last = None
        for _ in range(int(timeout / interval) + 100):
            last = fn()
            if last:
                return last
            if time.monotonic() > deadline:
                break
            time.sleep(interval)
        raise AssertionError("%s: timed out after %.1f s waiting for %s (last: %r)" %
                             (self.name, timeout, what, last))

    def wait_calls(self, n, pred=None, timeout=10, what=None):
        """Waits until at least n recorded calls match pred; returns them."""
        def check():
            got = self.snapshot(pred)
            return got if len(got) >= n else None
        return self.wait_until(check, timeout, what or "%d matching calls" % n)


# ---------------------------------------------------------------------------------------------
# Evolution API


_SEND_RE = re.compile(r"^/message/sendText/([^/]+)$")
_STATE_RE = re.compile(r"^/instance/connectionState/([^/]+)$")


def new_wa_id():
    """A fresh id shaped like the ones Baileys gives API sends: 3EB0 + 18 hex digits (22)."""
    return "3EB0" + secrets.token_hex(9).upper()


class EvolutionStandin(HttpStandin):
    """Evolution API v2.3.6 sendText and connectionState.

    Knobs (configure(**k) or POST /_control):
      apikey        the accepted `apikey` header (others get 401 Unauthorized)
      instances     names that exist (others get 404); None accepts any name
      state         connection state answered for every instance ("open"|"connecting"|"close"),
                    or states={"acme-bot": "close"} per instance
      fail_next     the next N sendText calls fail with fail_status (500 by default; a 503/429
                    carries Retry-After when fail_retry_after is set)
      fail_next_for {number: N}: the next N sends to that number fail with fail_status
      fail_body     response.message of those failures (default "stand-in told to fail")
      next_ids      key.ids the next successful sends answer with (default: fresh 3EB0… ids)
      delay_ms      every sendText is held this long before the answer
      delay_next    a list of delays (ms) consumed by the next sendText calls, one each
      exists_false  numbers answered 400 [{jid, exists:false, number}]
      honour_delay  hold the call for the body's `delay` like Evolution does (default True)
      state_fail    GET connectionState answers this status instead (e.g. 500)
      down          True: refuse connections (listening socket closed); False: back
    A call is recorded at arrival, so a call the client timed out on is still in the log."""

    name = "evolution"
    KNOBS = HttpStandin.KNOBS + ("apikey", "instances", "state", "states", "fail_next_for",
                                 "delay_next", "exists_false", "honour_delay", "state_fail",
                                 "fail_retry_after", "fail_body", "next_ids")

    def __init__(self, apikey="k", instances=("acme-bot",), state="open"):
        super().__init__()
        self.apikey = apikey
        self.instances = None if instances is None else set(instances)
        self.state = state
        self.states = {}
        self.fail_next_for = {}
        self.delay_next = []
        self.exists_false = set()
        self.honour_delay = True
        self.state_fail = None
        self.fail_body = None
        self.next_ids = []

    def _set_instances(self, v):
        self.instances = None if v is None else set(v)

    def _set_exists_false(self, v):
        self.exists_false = {re.sub(r"\D", "", str(x)) for x in v}

    def _set_fail_next_for(self, v):
        self.fail_next_for = {re.sub(r"\D", "", str(k)): int(n) for k, n in v.items()}

    def _set_delay_next(self, v):
        self.delay_next = [int(x) for x in v]

    @staticmethod
    def _error(status, message):
        reason = http.client.responses.get(status, "Error")
        return status, {}, _jbytes({"status": status, "error": reason,
                                    "response": {"message": message}})

    def _guard(self, call, instance):
        if self.instances is not None and instance not in self.instances:
            return self._error(404, ["The \"%s\" instance does not exist" % instance])
        if call["headers"].get("apikey") != self.apikey:
            return self._error(401, "Unauthorized")
        return None

    def handle(self, call):
        m = _SEND_RE.match(call["path"])
        if m and call["method"] == "POST":
            call["kind"] = "sendText"
            return self._send_text(call, urllib.parse.unquote(m.group(1)))
        m = _STATE_RE.match(call["path"])
        if m and call["method"] == "GET":
            call["kind"] = "connectionState"
            inst = urllib.parse.unquote(m.group(1))
            with self.lock:
                g = self._guard(call, inst)
                fail = self.state_fail
                state = self.states.get(inst, self.state)
            if g is not None:
                return g
            if fail:
                return self._error(int(fail), "stand-in told to fail connectionState")
            return 200, {}, _jbytes({"instance": {"instanceName": inst, "state": state}})
        call["kind"] = "other"
        return self._error(404, ["Cannot %s %s" % (call["method"], call["path"])])

    def _send_text(self, call, instance):
        with self.lock:
            g = self._guard(call, instance)
        if g is not None:
            return g
        body = call["json"]
        if not isinstance(body, dict):
            return self._error(400, ["instance is not of a type(s) object"])
        number, text = body.get("number"), body.get("text")
        if not isinstance(number, str) or not number:
            return self._error(400, ["instance requires property \"number\""])
        if not isinstance(text, str):
            return self._error(400, ["instance requires property \"text\""])
        if not text.strip():
            return self._error(400, ["Text is required"])
        delay = body.get("delay")
        if delay is not None and (not isinstance(delay, int) or isinstance(delay, bool)):
            return self._error(400, ["instance.delay is not of a type(s) integer"])
        digits = re.sub(r"\D", "", number.split("@")[0])
        call["number"], call["text"] = digits, text
        with self.lock:
            fail = None
            if self.fail_next_for.get(digits, 0) > 0:
                self.fail_next_for[digits] -= 1
                fail = self.fail_status
            if fail is None:
                fail = self.take_failure()
            extra = self.delay_next.pop(0) if self.delay_next else 0
            hold = self.delay_ms + extra
            if self.honour_delay and delay:
                hold += delay
            missing = digits in self.exists_false
            retry_after = self.fail_retry_after
            fail_body = self.fail_body
        if hold and not self.hold(hold):
            return None
        if fail is not None:
            st, h, b = self._error(int(fail), fail_body or "stand-in told to fail")
            if retry_after is not None:
                h = {"Retry-After": str(retry_after)}
            return st, h, b
        if missing:
            jid = digits + "@s.whatsapp.net"
            return self._error(400, [{"jid": jid, "exists": False, "number": digits}])
        with self.lock:
            wa_id = self.next_ids.pop(0) if self.next_ids else new_wa_id()
        call["wa_id"] = wa_id
        now = int(time.time())
        jid = number if "@" in number else digits + "@s.whatsapp.net"
        resp = {"key": {"remoteJid": jid, "fromMe": True, "id": wa_id},
                "pushName": "Você", "status": "PENDING",
                "message": {"conversation": text},
                "contextInfo": {"mentionedJid": [], "groupMentions": [],
                                "ephemeralSettingTimestamp": {"low": now, "high": 0,
                                                              "unsigned": False},
                                "disappearingMode": {"initiator": 0}},
                "messageType": "conversation", "messageTimestamp": now,
                "instanceId": "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f", "source": "web"}
        return 201, {}, _jbytes(resp)

    # -- reading

    def sends(self, ok=None, number=None):
        """sendText calls in arrival order; ok=True: answered 201 only; number: digits."""
        def pred(c):
            if c.get("kind") != "sendText":
                return False
            if number is not None and c.get("number") != re.sub(r"\D", "", str(number)):
                return False
            if ok is True and c.get("status") != 201:
                return False
            return True
        return self.snapshot(pred)

    def texts(self, number=None, ok=True):
        return [c.get("text") for c in self.sends(ok=ok, number=number)]

    def wait_sends(self, n, ok=True, number=None, timeout=10):
        def check():
            got = self.sends(ok=ok, number=number)
            return got if len(got) >= n else None
        return self.wait_until(check, timeout, "%d sendText calls%s%s" % (
            n, " answered 201" if ok else "", " to %s" % number if number else ""))

    def describe(self):
        d = super().describe()
        d.update({"sends": len(self.sends()), "delivered": len(self.sends(ok=True))})
        return d


# ---------------------------------------------------------------------------------------------
# Twenty CRM


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Country calling codes (digits) -> ISO 3166 alpha-2, for the phone normalisation Twenty does
# with libphonenumber-js on write. Enough for the tests; the first country listed per code wins.
CALLING_CODES = {
    "1": "US", "7": "RU", "20": "EG", "27": "ZA", "30": "GR", "31": "NL", "32": "BE", "33": "FR",
    "34": "ES", "36": "HU", "39": "IT", "40": "RO", "41": "CH", "43": "AT", "44": "GB", "45": "DK",
    "46": "SE", "47": "NO", "48": "PL", "49": "DE", "51": "PE", "52": "MX", "53": "CU", "54": "AR",
    "55": "BR", "56": "CL", "57": "CO", "58": "VE", "60": "MY", "61": "AU", "62": "ID", "63": "PH",
    "64": "NZ", "65": "SG", "66": "TH", "81": "JP", "82": "KR", "84": "VN", "86": "CN", "90": "TR",
    "91": "IN", "92": "PK", "212": "MA", "351": "PT", "353": "IE", "358": "FI", "420": "CZ",
    "502": "GT", "503": "SV", "506": "CR", "507": "PA", "591": "BO", "593": "EC", "595": "PY",
    "598": "UY", "966": "SA", "971": "AE", "972": "IL",
}
COUNTRY_CODES = {}
for _cc, _iso in CALLING_CODES.items():
    COUNTRY_CODES.setdefault(_iso, _cc)
# National significant number lengths where libphonenumber would reject others (TOO_SHORT /
# TOO_LONG); other countries accept 4..14 digits here.
NATIONAL_LENGTHS = {"ES": (9,), "US": (10,), "BR": (10, 11), "PT": (9,), "FR": (9,), "MX": (10,),
                    "GB": (9, 10), "IT": (9, 10), "AR": (10, 11), "DE": tuple(range(6, 12))}


class TwentyError(Exception):
    def __init__(self, status, message, error=None, headers=None, extra=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error or {400: "BadRequestException", 401: "UNAUTHENTICATED",
                               404: "NotFoundException"}.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra or {}

    def reply(self):
        body = {"statusCode": self.status, "error": self.error, "messages": [self.message]}
        body.update(self.extra)
        return self.status, self.headers, _jbytes(body)


def normalize_phone(number, calling_code=None, country=None):
    """Twenty's write-time phone normalisation (transform-phones-value): returns
    (national number, "+<cc>", ISO country) or raises TwentyError 400. Empty -> (None, None,
    None) unless a calling code or country is given alone."""
    number = None if number in (None, "") else str(number)
    calling_code = None if calling_code in (None, "") else str(calling_code)
    country = None if country in (None, "") else str(country)
    if calling_code is not None:
        cc = calling_code.lstrip("+")
        if not cc.isdigit() or cc not in CALLING_CODES:
            raise TwentyError(400, "Invalid calling code %s" % calling_code)
    else:
        cc = None
    if country is not None and country.upper() not in COUNTRY_CODES:
        raise TwentyError(400, "Invalid country code %s" % country)
    if number is None:
        return None, ("+" + cc) if cc else None, country.upper() if country else None
    compact_n = re.sub(r"[\s\-().]", "", number)
    if compact_n.startswith("+"):
        digits = compact_n[1:]
        if not digits.isdigit():
            raise TwentyError(400, "Provided phone number is invalid %s" % number)
        inferred = None
        for n in (3, 2, 1):
            if digits[:n] in CALLING_CODES:
                inferred = digits[:n]
                break
        if inferred is None:
            raise TwentyError(400, "Provided phone number is invalid %s" % number)
        if cc is not None and cc != inferred:
            raise TwentyError(400, "Provided and inferred calling code are conflicting")
        if country is not None and COUNTRY_CODES[country.upper()] != inferred:
            raise TwentyError(400, "Provided and inferred calling code are conflicting")
        cc = inferred
        national = digits[len(inferred):]
    else:
        if not compact_n.isdigit():
            raise TwentyError(400, "Provided phone number is invalid %s" % number)
        if cc is None and country is not None:
            cc = COUNTRY_CODES[country.upper()]
        if cc is None:
            raise TwentyError(400, "Provided phone number is invalid %s" % number)
        national = compact_n
    iso = country.upper() if country else CALLING_CODES[cc]
    lengths = NATIONAL_LENGTHS.get(iso)
    if (lengths and len(national) not in lengths) or not 4 <= len(national) <= 14:
        raise TwentyError(400, "Provided phone number is invalid %s" % number)
    return national, "+" + cc, iso


# Objects of the stand-in workspace: plural -> (singular, fields). Field kinds: "text",
# "number", "uuid", "ts", "json", "name" (FULL_NAME), "emails", "phones", "links", "rich"
# (RICH_TEXT_V2), "actor", "select:<A|B>".
_BASE_FIELDS = {"id": "uuid", "createdAt": "ts", "updatedAt": "ts", "deletedAt": "ts",
                "createdBy": "actor", "updatedBy": "actor", "position": "number"}
_OBJECTS = {
    "people": ("person", {"name": "name", "emails": "emails", "phones": "phones",
                          "jobTitle": "text", "city": "text", "avatarUrl": "text",
                          "linkedinLink": "links", "xLink": "links", "companyId": "uuid"}),
    "companies": ("company", {"name": "text", "domainName": "links", "employees": "number"}),
    "opportunities": ("opportunity", {"name": "text", "companyId": "uuid",
                                      "pointOfContactId": "uuid"}),
    "notes": ("note", {"title": "text", "bodyV2": "rich"}),
    "tasks": ("task", {"title": "text", "bodyV2": "rich", "dueAt": "ts", "assigneeId": "uuid",
                       "status": "select:TODO|IN_PROGRESS|DONE"}),
    "noteTargets": ("noteTarget", {"noteId": "uuid"}),
    "taskTargets": ("taskTarget", {"taskId": "uuid"}),
}
_LINKS = {"target": {"person": "targetPersonId", "company": "targetCompanyId",
                     "opportunity": "targetOpportunityId"},
          "legacy": {"person": "personId", "company": "companyId",
                     "opportunity": "opportunityId"}}
_LINK_PLURAL = {"person": "people", "company": "companies", "opportunity": "opportunities"}


def _cap(s):
    return s[0].upper() + s[1:]


def _blocknote(markdown):
    blocks = []
    for line in (markdown or "").split("\n"):
        blocks.append({"id": str(uuid.uuid4()), "type": "paragraph",
                       "props": {"textColor": "default", "backgroundColor": "default",
                                 "textAlignment": "left"},
                       "content": [{"type": "text", "text": line, "styles": {}}] if line else [],
                       "children": []})
    return json.dumps(blocks, separators=(",", ":"), ensure_ascii=False)


class _FilterParser:
    """Twenty's REST filter grammar: field[cmp]:value, dotted composite paths, and(), or(),
    not(), a root comma list as an implicit and, "…"/'…' quoting, [a,b] lists for in/
    containsAny, NULL/NOT_NULL for is."""

    COMPARATORS = ("eq", "neq", "in", "containsAny", "is", "gt", "gte", "lt", "lte",
                   "startsWith", "endsWith", "like", "ilike")

    def __init__(self, text):
        self.s = text

    @staticmethod
    def split_top(s):
        """Splits on commas outside quotes, parentheses and brackets."""
        parts, depth, quote, cur = [], 0, None, []
        for ch in s:
            if quote:
                cur.append(ch)
                if ch == quote:
                    quote = None
                continue
            if ch in "\"'":
                quote = ch
            elif ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
                if depth < 0:
                    raise TwentyError(400, "Invalid filter: unbalanced parentheses")
            elif ch == "," and depth == 0:
                parts.append("".join(cur))
                cur = []
                continue
            cur.append(ch)
        if quote or depth != 0:
            raise TwentyError(400, "Invalid filter: unbalanced quotes or parentheses")
        parts.append("".join(cur))
        return [p.strip() for p in parts]

    def parse(self):
        s = self.s.strip()
        if not s:
            raise TwentyError(400, "Invalid filter: empty")
        parts = self.split_top(s)
        nodes = [self.node(p) for p in parts]
        return nodes[0] if len(nodes) == 1 else ("and", nodes)

    def node(self, s):
        m = re.match(r"^(and|or|not)\((.*)\)$", s, re.S)
        if m:
            op, inner = m.group(1), m.group(2)
            kids = [self.node(p) for p in self.split_top(inner)]
            if op == "not":
                if len(kids) != 1:
                    raise TwentyError(400, "Invalid filter: not() takes exactly one predicate")
                return ("not", kids[0])
            return (op, kids)
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_.]*)\[([A-Za-z]+)\]:(.*)$", s, re.S)
        if not m:
            raise TwentyError(400, "Invalid filter: '%s' is not a predicate field[cmp]:value" % s)
        field, cmp_, raw = m.group(1), m.group(2), m.group(3)
        if cmp_ not in self.COMPARATORS:
            raise TwentyError(400, "Invalid filter: unknown comparator '%s'" % cmp_)
        return ("pred", field, cmp_, self.value(raw, cmp_))

    @staticmethod
    def unquote(v):
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            return v[1:-1]
        return v

    def value(self, raw, cmp_):
        if cmp_ in ("in", "containsAny"):
            r = raw.strip()
            if not (r.startswith("[") and r.endswith("]")):
                raise TwentyError(400, "Invalid filter: %s expects [a,b,…]" % cmp_)
            inner = r[1:-1]
            return [self.unquote(x) for x in self.split_top(inner)] if inner.strip() else []
        v = self.unquote(raw)
        if cmp_ == "is" and v not in ("NULL", "NOT_NULL"):
            raise TwentyError(400, "Invalid filter: is expects NULL or NOT_NULL")
        return v


def _like_re(pattern, ci):
    out = []
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    return re.compile("^" + "".join(out) + "$", re.S | (re.I if ci else 0))


class TwentyStandin(HttpStandin):
    """Twenty CRM REST (core API) for people, companies, opportunities, notes, tasks,
    noteTargets and taskTargets, in memory.

    Knobs:
      api_key        the accepted Bearer token (401 UNAUTHENTICATED otherwise); expired=True
                     answers 401 "Token has expired." to every request
      link_style     "target" (targetPersonId, v1.17+) or "legacy" (personId) for
                     noteTargets/taskTargets; the other names are unknown fields (400)
      window_s/limit the sliding rate window: a request arriving when `limit` requests were
                     accepted in the last window_s seconds gets 429 (default 100 per 60 s)
      rate_style     "new" (Retry-After, X-RateLimit-*, RATE_LIMITED body) or "old" ("Limit
                     reached (100 tokens per 60000 ms)" body, no Retry-After)
      custom_fields  {"leadScore": "number"} custom person fields (default: leadScore)
      fail_next      the next N /rest requests fail with fail_status (500)
      rules          a list of {"method", "path" (prefix, no query), "action", "times"}:
                     action "hang" (hold until release()/stop(), not applied, then closed),
                     "drop" (closed at once without an answer, not applied), "apply_drop"
                     (applied, then closed without an answer), or an HTTP status number
      delay_ms       every /rest request is held this long
      down           refuse connections
    Every /rest request is recorded with its arrival time; max_window() gives the largest
    number that arrived in any window_s window (429s included)."""

    name = "twenty"
    KNOBS = HttpStandin.KNOBS + ("api_key", "expired", "link_style", "window_s", "limit",
                                 "rate_style", "custom_fields", "rules", "max_limit",
                                 "fail_retry_after")

    def __init__(self, api_key="tw-key", link_style="target", window_s=60.0, limit=100,
                 rate_style="new"):
        super().__init__()
        self.api_key = api_key
        self.expired = False
        self.link_style = link_style
        self.window_s = float(window_s)
        self.limit = int(limit)
        self.rate_style = rate_style
        self.custom_fields = {"leadScore": "number"}
        self.rules = []
        self.max_limit = 200
        self.default_limit = 60
        self._accepted = collections.deque()  # arrival times counted by the limiter
        self.records = {p: collections.OrderedDict() for p in _OBJECTS}
        self.rate_limited = 0

    def _set_rules(self, v):
        self.rules = [dict(r) for r in v]

    # -- schema

    def fields_of(self, plural):
        singular, fields = _OBJECTS[plural]
        f = dict(_BASE_FIELDS)
        f.update(fields)
        if plural == "people":
            f.update(self.custom_fields)
        if plural in ("noteTargets", "taskTargets"):
            for name in _LINKS[self.link_style].values():
                f[name] = "uuid"
        return f

    def link_field(self, target="person"):
        return _LINKS[self.link_style][target]

    # -- request entry

    def handle(self, call):
        path = call["path"]
        if not (path == "/rest" or path.startswith("/rest/")):
            return TwentyError(404, "Cannot %s %s" % (call["method"], path),
                               "NotFoundException").reply()
        auth = call["headers"].get("authorization", "")
        with self.lock:
            key, expired = self.api_key, self.expired
        if not auth.startswith("Bearer ") or auth[7:] != key or expired:
            msg = "Token has expired." if expired and auth[7:] == key else "Invalid token"
            return TwentyError(401, msg, "UNAUTHENTICATED").reply()
        limited = self._rate_check(call)
        if limited is not None:
            return limited
        status = self.take_failure()
        if status is not None:
            return TwentyError(int(status), "stand-in told to fail", "InternalServerError"
                               if status >= 500 else None).reply()
        rule = self._match_rule(call)
        with self.lock:
            delay = self.delay_ms
        if delay and not self.hold(delay):
            return None
        if rule == "hang":
            self.hang()
            return None
        if rule == "drop":
            return None
        if isinstance(rule, int):
            return TwentyError(rule, "stand-in rule answered %d" % rule).reply()
        try:
            with self.lock:
                reply = self.route(call)
        except TwentyError as e:
            reply = e.reply()
        if rule == "apply_drop":
            return None
        return reply

    def _rate_check(self, call):
        now = call["t"]
        with self.lock:
            while self._accepted and self._accepted[0] <= now - self.window_s:
                self._accepted.popleft()
            if len(self._accepted) >= self.limit:
                self.rate_limited += 1
                call["rate_limited"] = True
                wait = max(1, int(self._accepted[0] + self.window_s - now + 0.999))
                if self.rate_style == "old":
                    return TwentyError(429, "Limit reached (%d tokens per %d ms)" % (
                        self.limit, int(self.window_s * 1000)), "TooManyRequestsException").reply()
                return TwentyError(
                    429, "Rate limit exceeded for apiKey: %d requests per %ds." % (
                        self.limit, int(self.window_s)), "RATE_LIMITED",
                    headers={"Retry-After": str(wait), "X-RateLimit-Limit": str(self.limit),
                             "X-RateLimit-Remaining": "0"},
                    extra={"limitKind": "speed", "scope": {"spenderType": "apiKey",
                                                           "spenderId": "key-1"},
                           "limit": self.limit, "remaining": 0,
                           "periodCount": int(self.window_s), "periodUnit": "second",
                           "retryAfterSeconds": wait}).reply()
            self._accepted.append(now)
        return None

    def _match_rule(self, call):
        with self.lock:
            for r in self.rules:
                if r.get("times", 1) <= 0:
                    continue
                if r.get("method", call["method"]).upper() != call["method"]:
                    continue
                if not call["path"].startswith(r["path"]):
                    continue
                r["times"] = r.get("times", 1) - 1
                call["rule"] = r["action"]
                return r["action"]
        return None

    # -- routing (under self.lock)

    def route(self, call):
        segs = [s for s in call["path"][len("/rest"):].split("/") if s]
        method = call["method"]
        q = call["query"]
        if not segs:
            raise TwentyError(400, "Query path '%s' invalid. Valid examples: /rest/companies/id "
                              "or /rest/companies" % call["path"])
        if segs[0] == "metadata":
            return self._metadata(method, segs)
        if segs[0] == "open-api":
            return 200, {}, _jbytes(self._openapi())
        if segs[0] == "batch":
            if method != "POST" or len(segs) != 2:
                raise TwentyError(400, "Query path '%s' invalid" % call["path"])
            plural = self._object(segs[1])
            return self._batch(plural, call)
        plural = self._object(segs[0])
        self._check_depth(q)
        if len(segs) > 3 or (len(segs) == 3 and segs[2] != "restore"):
            raise TwentyError(400, "Query path '%s' invalid. Valid examples: /rest/companies/id "
                              "or /rest/companies" % call["path"])
        if len(segs) >= 2:
            if segs[1] in ("duplicates", "groupBy", "merge"):
                raise TwentyError(400, "'%s' is not supported by the stand-in" % segs[1])
            if not _UUID_RE.match(segs[1]):
                raise TwentyError(400, "'%s' is not a valid UUID" % urllib.parse.unquote(segs[1]))
            rid = segs[1].lower()
            if len(segs) == 3:
                if method != "PATCH":
                    raise TwentyError(400, "restore needs PATCH")
                return self._restore(plural, rid)
            if method == "GET":
                return self._get(plural, rid)
            if method in ("PATCH", "PUT"):
                return self._update(plural, rid, call["json"])
            if method == "DELETE":
                return self._delete(plural, rid, q)
            raise TwentyError(400, "method %s not allowed on a record" % method)
        if method == "GET":
            return self._find(plural, q)
        if method == "POST":
            upsert = q.get("upsert", ["false"])[-1] == "true"
            body = call["json"]
            if not isinstance(body, dict):
                raise TwentyError(400, "Body must be a JSON object")
            rec, _ = self._create(plural, body, upsert)
            singular = _OBJECTS[plural][0]
            return 201, {}, _jbytes({"data": {"create" + _cap(singular): rec}})
        raise TwentyError(400, "method %s not allowed on a collection" % method)

    def _object(self, seg):
        if seg in _OBJECTS:
            return seg
        msg = "object '%s' not found. eg: companies" % seg
        for plural, (singular, _) in _OBJECTS.items():
            if seg == singular:
                msg += " Did you mean '%s'?" % plural
        raise TwentyError(400, msg)

    @staticmethod
    def _check_depth(q):
        if "depth" in q and q["depth"][-1] not in ("0", "1"):
            raise TwentyError(400, "Depth %s is not supported. Use 0 or 1" % q["depth"][-1])

    # -- metadata (for link-field discovery)

    def _metadata(self, method, segs):
        if method != "GET" or segs[1:] not in (["objects"], ["fields"]):
            raise TwentyError(400, "metadata: the stand-in serves GET objects and fields only")
        objs = []
        for plural in _OBJECTS:
            singular = _OBJECTS[plural][0]
            objs.append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "twenty-obj:" + plural)),
                         "nameSingular": singular, "namePlural": plural,
                         "fields": [{"name": n, "type": t.split(":")[0].upper()}
                                    for n, t in self.fields_of(plural).items()]})
        if segs[1] == "fields":
            return 200, {}, _jbytes({"data": {"fields": [dict(f, objectNameSingular=o[
                "nameSingular"]) for o in objs for f in o["fields"]]}})
        return 200, {}, _jbytes({"data": {"objects": objs}})

    def _openapi(self):
        schemas = {}
        for plural in _OBJECTS:
            singular = _OBJECTS[plural][0]
            schemas[_cap(singular)] = {"type": "object", "properties": {
                n: {"type": "string"} for n in self.fields_of(plural)}}
        return {"openapi": "3.0.3", "components": {"schemas": schemas}}

    # -- records

    def _stamp(self, rec, create):
        now = _now_iso()
        if create:
            rec.setdefault("createdAt", now)
            rec["createdBy"] = {"source": "API", "workspaceMemberId": None, "name": "wahook",
                                "context": {}}
        rec["updatedAt"] = now
        rec["updatedBy"] = {"source": "API", "workspaceMemberId": None, "name": "wahook",
                            "context": {}}

    def _blank(self, plural):
        rec = {"id": None, "deletedAt": None, "position": len(self.records[plural])}
        for name, kind in self.fields_of(plural).items():
            if name in rec or kind in ("actor", "ts"):
                continue
            if kind == "name":
                rec[name] = {"firstName": "", "lastName": ""}
            elif kind == "emails":
                rec[name] = {"primaryEmail": "", "additionalEmails": None}
            elif kind == "phones":
                rec[name] = {"primaryPhoneNumber": "", "primaryPhoneCountryCode": "",
                             "primaryPhoneCallingCode": "", "additionalPhones": None}
            elif kind == "links":
                rec[name] = {"primaryLinkUrl": "", "primaryLinkLabel": "", "secondaryLinks": None}
            elif kind == "rich":
                rec[name] = {"markdown": None, "blocknote": None}
            elif kind == "text":
                rec[name] = ""
            else:
                rec[name] = None
        if plural == "tasks":
            rec["status"] = "TODO"
            rec["dueAt"] = None
        return rec

    def _apply(self, plural, rec, body):
        """Validates and merges body into rec (composite sub-fields merge)."""
        fields = self.fields_of(plural)
        singular = _OBJECTS[plural][0]
        for name, value in body.items():
            kind = fields.get(name)
            if kind is None:
                raise TwentyError(400, "Object %s doesn't have any \"%s\" field." % (singular, name))
            if name in ("createdBy", "updatedBy"):
                continue
            if name == "id":
                if value is not None and (not isinstance(value, str) or
                                          not _UUID_RE.match(value)):
                    raise TwentyError(400, "Invalid UUID %r for id" % (value,))
                continue
            if value is None:
                rec[name] = None
                continue
            if kind == "uuid":
                if not isinstance(value, str) or not _UUID_RE.match(value):
                    raise TwentyError(400, "Invalid UUID %r for %s" % (value, name))
                rec[name] = value.lower()
            elif kind == "number":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TwentyError(400, "Invalid value %r for number field %s" % (value, name))
                rec[name] = value
            elif kind == "text":
                if not isinstance(value, str):
                    raise TwentyError(400, "Invalid value %r for text field %s" % (value, name))
                rec[name] = value
            elif kind == "ts":
                if not isinstance(value, str):
                    raise TwentyError(400, "Invalid date %r for %s" % (value, name))
                try:
                    datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    raise TwentyError(400, "Invalid date %r for %s" % (value, name))
                rec[name] = value
            elif kind.startswith("select:"):
                allowed = kind.split(":", 1)[1].split("|")
                if value not in allowed:
                    raise TwentyError(400, "Invalid value '%s' for %s (allowed: %s)" % (
                        value, name, ", ".join(allowed)))
                rec[name] = value
            elif kind == "rich":
                if not isinstance(value, dict) or set(value) - {"markdown", "blocknote"}:
                    raise TwentyError(400, "%s must be {markdown, blocknote}" % name)
                if "blocknote" in value and value["blocknote"] is not None and \
                        not isinstance(value["blocknote"], str):
                    raise TwentyError(400, "%s.blocknote must be a JSON string" % name)
                md = value.get("markdown")
                if md is not None and not isinstance(md, str):
                    raise TwentyError(400, "%s.markdown must be a string" % name)
                rec[name] = {"markdown": md, "blocknote": _blocknote(md) if md is not None
                             else value.get("blocknote")}
            elif kind in ("name", "emails", "links"):
                subs = {"name": ("firstName", "lastName"),
                        "emails": ("primaryEmail", "additionalEmails"),
                        "links": ("primaryLinkUrl", "primaryLinkLabel", "secondaryLinks")}[kind]
                if not isinstance(value, dict) or set(value) - set(subs):
                    raise TwentyError(400, "Invalid value for composite field %s: %r" %
                                      (name, value))
                cur = dict(rec.get(name) or {})
                cur.update(value)
                rec[name] = cur
            elif kind == "phones":
                rec[name] = self._phones(rec.get(name), value)
            else:
                rec[name] = value

    @staticmethod
    def _phones(cur, value):
        subs = ("primaryPhoneNumber", "primaryPhoneCountryCode", "primaryPhoneCallingCode",
                "additionalPhones")
        if not isinstance(value, dict) or set(value) - set(subs):
            raise TwentyError(400, "Invalid value for composite field phones: %r" % (value,))
        merged = dict(cur or {})
        merged.update(value)
        if any(k in value for k in subs[:3]):
            num, cc, iso = normalize_phone(merged.get("primaryPhoneNumber"),
                                           value.get("primaryPhoneCallingCode"),
                                           value.get("primaryPhoneCountryCode"))
            merged["primaryPhoneNumber"] = num
            merged["primaryPhoneCallingCode"] = cc
            merged["primaryPhoneCountryCode"] = iso
        extra = value.get("additionalPhones")
        if "additionalPhones" in value and extra is not None:
            if isinstance(extra, str):
                try:
                    extra = json.loads(extra)
                except ValueError:
                    raise TwentyError(400, "additionalPhones must be an array")
            if not isinstance(extra, list):
                raise TwentyError(400, "additionalPhones must be an array")
            out = []
            for p in extra:
                if not isinstance(p, dict):
                    raise TwentyError(400, "additionalPhones entries must be objects")
                n, c, i = normalize_phone(p.get("number"), p.get("callingCode"),
                                          p.get("countryCode"))
                out.append({"number": n, "callingCode": c, "countryCode": i})
            merged["additionalPhones"] = out
        return merged

    def _check_refs(self, plural, rec):
        """Foreign keys of the junction records must point at existing rows."""
        refs = []
        if plural == "noteTargets":
            refs.append(("noteId", "notes"))
        if plural == "taskTargets":
            refs.append(("taskId", "tasks"))
        if plural in ("noteTargets", "taskTargets"):
            for target, name in _LINKS[self.link_style].items():
                refs.append((name, _LINK_PLURAL[target]))
        if plural == "people":
            refs.append(("companyId", "companies"))
        for name, other in refs:
            v = rec.get(name)
            if v is not None and v not in self.records[other]:
                raise TwentyError(400, "insert or update on table \"%s\" violates foreign key "
                                  "constraint on \"%s\"" % (plural, name), "QueryFailedError")

    def _unique_match(self, plural, rec):
        if plural != "people":
            return None
        email_ = (rec.get("emails") or {}).get("primaryEmail")
        if not email_:
            return None
        for other in self.records[plural].values():
            if other["id"] != rec.get("id") and other.get("deletedAt") is None and \
                    (other.get("emails") or {}).get("primaryEmail") == email_:
                return other
        return None

    def _create(self, plural, body, upsert):
        rid = body.get("id")
        if rid is not None:
            if not isinstance(rid, str) or not _UUID_RE.match(rid):
                raise TwentyError(400, "Invalid UUID %r for id" % (rid,))
            rid = rid.lower()
        existing = self.records[plural].get(rid) if rid else None
        if existing is not None and not upsert:
            raise TwentyError(400, "duplicate key value violates unique constraint \"PK_%s\"" %
                              plural, "QueryFailedError")
        if existing is None and upsert:
            probe = self._blank(plural)
            self._apply(plural, probe, body)
            existing = self._unique_match(plural, probe)
        if existing is not None:
            new = copy.deepcopy(existing)
            self._apply(plural, new, {k: v for k, v in body.items() if k != "id"})
            self._check_refs(plural, new)
            self._stamp(new, False)
            new["deletedAt"] = None
            self.records[plural][new["id"]] = new
            return copy.deepcopy(new), False
        rec = self._blank(plural)
        self._apply(plural, rec, body)
        rec["id"] = rid or str(uuid.uuid4())
        if self._unique_match(plural, rec) is not None:
            raise TwentyError(400, "A duplicate entry was detected: emails.primaryEmail",
                              "QueryFailedError")
        self._check_refs(plural, rec)
        self._stamp(rec, True)
        self.records[plural][rec["id"]] = rec
        return copy.deepcopy(rec), True

    def _batch(self, plural, call):
        body = call["json"]
        if not isinstance(body, list):
            raise TwentyError(400, "Body must be an array")
        if not body:
            raise TwentyError(400, "Input must not be empty")
        if len(body) > 60:
            raise TwentyError(400, "Maximum 60 records per batch")
        upsert = call["query"].get("upsert", ["false"])[-1] == "true"
        snapshot = copy.deepcopy(self.records[plural])
        out = []
        try:
            for item in body:
                if not isinstance(item, dict):
                    raise TwentyError(400, "Batch entries must be objects")
                out.append(self._create(plural, item, upsert)[0])
        except TwentyError:
            self.records[plural] = snapshot  # one transaction
            raise
        return 201, {}, _jbytes({"data": {"create" + _cap(plural): out}})

    def _live(self, plural, rid):
        rec = self.records[plural].get(rid)
        if rec is None or rec.get("deletedAt") is not None:
            return None
        return rec

    def _get(self, plural, rid):
        rec = self._live(plural, rid)
        singular = _OBJECTS[plural][0]
        if rec is None:
            raise TwentyError(404, "Record not found", "NotFoundException")
        return 200, {}, _jbytes({"data": {singular: rec}})

    def _update(self, plural, rid, body):
        singular = _OBJECTS[plural][0]
        if not isinstance(body, dict):
            raise TwentyError(400, "Body must be a JSON object")
        rec = self._live(plural, rid)
        if rec is None:
            raise TwentyError(400, "Could not find any entity of type \"%s\" matching: "
                              "{\"id\": \"%s\"}" % (singular, rid), "EntityNotFoundError")
        new = copy.deepcopy(rec)
        if "id" in body and body["id"] not in (None, rid):
            raise TwentyError(400, "id cannot be changed")
        self._apply(plural, new, {k: v for k, v in body.items() if k != "id"})
        self._check_refs(plural, new)
        self._stamp(new, False)
        self.records[plural][rid] = new
        return 200, {}, _jbytes({"data": {"update" + _cap(singular): new}})

    def _delete(self, plural, rid, q):
        singular = _OBJECTS[plural][0]
        rec = self.records[plural].get(rid)
        if rec is None:
            raise TwentyError(404, "Record not found", "NotFoundException")
        if q.get("soft_delete", ["false"])[-1] == "true":
            rec["deletedAt"] = _now_iso()
        else:
            del self.records[plural][rid]
        return 200, {}, _jbytes({"data": {"delete" + _cap(singular): {"id": rid}}})

    def _restore(self, plural, rid):
        singular = _OBJECTS[plural][0]
        rec = self.records[plural].get(rid)
        if rec is None:
            raise TwentyError(404, "Record not found", "NotFoundException")
        rec["deletedAt"] = None
        return 200, {}, _jbytes({"data": {"restore" + _cap(singular): rec}})

    # -- find many

    def _find(self, plural, q):
        filt = q.get("filter", [None])[-1]
        fields = self.fields_of(plural)
        node = _FilterParser(filt).parse() if filt else None
        if node is not None:
            self._check_filter_fields(node, fields, _OBJECTS[plural][0])
        limit = self.default_limit
        if "limit" in q:
            try:
                limit = int(q["limit"][-1])
            except ValueError:
                raise TwentyError(400, "limit must be an integer")
            if limit < 0:
                raise TwentyError(400, "limit must be >= 0")
        limit = min(limit, self.max_limit)
        rows = [r for r in self.records[plural].values() if r.get("deletedAt") is None and
                (node is None or self._eval(node, r))]
        order = q.get("order_by", [None])[-1]
        if order:
            for part in reversed(self._split_order(order)):
                rows = self._sort(rows, part)
        total = len(rows)
        start = 0
        if "starting_after" in q:
            try:
                start = int(base64.b64decode(q["starting_after"][-1]).decode()) + 1
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise TwentyError(400, "Invalid cursor")
        page = rows[start:start + limit]
        cur = (lambda i: base64.b64encode(str(i).encode()).decode())
        info = {"hasNextPage": start + limit < total, "hasPreviousPage": start > 0,
                "startCursor": cur(start) if page else None,
                "endCursor": cur(start + len(page) - 1) if page else None}
        return 200, {}, _jbytes({"data": {plural: page}, "pageInfo": info, "totalCount": total})

    @staticmethod
    def _split_order(order):
        parts = []
        for p in order.split(","):
            m = re.match(r"^([A-Za-z0-9_.]+)(?:\[(AscNullsFirst|AscNullsLast|DescNullsFirst|"
                         r"DescNullsLast)\])?$", p.strip())
            if not m:
                raise TwentyError(400, "Invalid order_by '%s'" % p)
            parts.append((m.group(1), m.group(2) or "AscNullsFirst"))
        return parts

    @staticmethod
    def _sort(rows, part):
        field, how = part
        desc = how.startswith("Desc")
        nulls_first = how.endswith("NullsFirst")
        with_v = [(TwentyStandin._path(r, field), r) for r in rows]
        nulls = [r for v, r in with_v if v in (None, "")]
        vals = [(v, r) for v, r in with_v if v not in (None, "")]
        vals.sort(key=lambda x: (str(type(x[0])), x[0]), reverse=desc)
        out = [r for _, r in vals]
        return nulls + out if nulls_first else out + nulls

    def _check_filter_fields(self, node, fields, singular):
        if node[0] in ("and", "or"):
            for k in node[1]:
                self._check_filter_fields(k, fields, singular)
        elif node[0] == "not":
            self._check_filter_fields(node[1], fields, singular)
        else:
            top = node[1].split(".")[0]
            if top not in fields:
                raise TwentyError(400, "field '%s' does not exist on %s" % (top, singular))

    @staticmethod
    def _path(rec, dotted):
        v = rec
        for p in dotted.split("."):
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v

    def _eval(self, node, rec):
        op = node[0]
        if op == "and":
            return all(self._eval(k, rec) for k in node[1])
        if op == "or":
            return any(self._eval(k, rec) for k in node[1])
        if op == "not":
            return not self._eval(node[1], rec)
        _, field, cmp_, value = node
        actual = self._path(rec, field)
        if cmp_ == "is":
            return (actual is None) == (value == "NULL")
        if isinstance(actual, (list, dict)):
            actual_s = json.dumps(actual, ensure_ascii=False)
        else:
            actual_s = actual

        def conv(v):
            if isinstance(actual, bool):
                return v == "true"
            if isinstance(actual, (int, float)):
                try:
                    return float(v)
                except ValueError:
                    raise TwentyError(400, "Invalid number '%s' in filter on %s" % (v, field))
            return v
        if cmp_ in ("in", "containsAny"):
            if cmp_ == "containsAny" and isinstance(actual, list):
                return any(str(x) in value for x in actual)
            return actual is not None and any(actual == conv(v) for v in value)
        if actual is None:
            return cmp_ == "neq"
        if cmp_ == "eq":
            return actual == conv(value)
        if cmp_ == "neq":
            return actual != conv(value)
        if cmp_ in ("gt", "gte", "lt", "lte"):
            v = conv(value)
            try:
                return {"gt": actual > v, "gte": actual >= v, "lt": actual < v,
                        "lte": actual <= v}[cmp_]
            except TypeError:
                return False
        s = str(actual_s)
        if cmp_ == "startsWith":
            return s.startswith(value)
        if cmp_ == "endsWith":
            return s.endswith(value)
        if cmp_ in ("like", "ilike"):
            return bool(_like_re(value, cmp_ == "ilike").match(s))
        return False

    # -- reading (thread-safe copies)

    def all(self, plural):
        with self.lock:
            return [copy.deepcopy(r) for r in self.records[plural].values()
                    if r.get("deletedAt") is None]

    def people(self):
        return self.all("people")

    def notes(self):
        return self.all("notes")

    def note_targets(self):
        return self.all("noteTargets")

    def tasks(self):
        return self.all("tasks")

    def task_targets(self):
        return self.all("taskTargets")

    def people_by_phone(self, national, calling_code):
        return [p for p in self.people()
                if (p.get("phones") or {}).get("primaryPhoneNumber") == national and
                (p.get("phones") or {}).get("primaryPhoneCallingCode") == calling_code]

    def notes_of(self, person_id):
        """Notes linked to person_id: [(note, number of noteTargets linking it)]."""
        link = self.link_field("person")
        with self.lock:
            targets = [t for t in self.records["noteTargets"].values()
                       if t.get(link) == person_id and t.get("deletedAt") is None]
            counts = collections.Counter(t["noteId"] for t in targets)
            return [(copy.deepcopy(self.records["notes"][nid]), n) for nid, n in counts.items()
                    if nid in self.records["notes"]]

    def rest_calls(self, method=None, prefix=None):
        def pred(c):
            return c["path"].startswith(prefix or "/rest") and \
                (method is None or c["method"] == method)
        return self.snapshot(pred)

    def max_window(self, window_s=None):
        """Largest number of /rest requests that arrived within any window_s seconds."""
        w = self.window_s if window_s is None else window_s
        return max_in_window([c["t"] for c in self.rest_calls()], w)

    def describe(self):
        d = super().describe()
        with self.lock:
            d["records"] = {p: list(r.values()) for p, r in self.records.items()}
            d["rate_limited"] = self.rate_limited
        d["max_window"] = self.max_window()
        d["window_s"] = self.window_s
        d["limit"] = self.limit
        return d


# ---------------------------------------------------------------------------------------------
# SMTP sink


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    handle_error = _quiet_handle_error


class _SmtpHandler(socketserver.StreamRequestHandler):
    sink = None
    timeout = 30

    def _send(self, line):
        self.wfile.write(line.encode("ascii") + b"\r\n")
        self.wfile.flush()

    def _line(self, limit=4096):
        line = self.rfile.readline(limit + 2)
        if not line:
            raise EOFError
        return line.rstrip(b"\r\n").decode("utf-8", "replace")

    def setup(self):
        super().setup()
        self.sink._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.sink._track(self.connection, False)

    def handle(self):
        sink = self.sink
        sess = {"helo": None, "ehlo": False, "auth_user": None, "from": None, "rcpt": []}
        try:
            self._send("220 127.0.0.1 wahook-sink ESMTP ready")
            for _ in range(10000):
                line = self._line()
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                with sink.lock:
                    sink.commands.append(line if verb not in ("AUTH",) else "AUTH " +
                                         arg.split(" ")[0])
                if verb in ("EHLO", "HELO"):
                    sess.update(helo=arg, ehlo=verb == "EHLO", **{"from": None, "rcpt": []})
                    if verb == "HELO":
                        self._send("250 127.0.0.1")
                    else:
                        self._send("250-127.0.0.1 greets %s" % arg)
                        self._send("250-SIZE %d" % MAX_BODY)
                        self._send("250-8BITMIME")
                        self._send("250-AUTH PLAIN LOGIN")
                        self._send("250 SMTPUTF8")
                elif verb == "AUTH":
                    self._auth(sess, arg)
                elif verb == "MAIL":
                    m = re.match(r"(?i)^FROM:\s*<([^>]*)>", arg)
                    if not sess["helo"]:
                        self._send("503 5.5.1 EHLO first")
                    elif not m:
                        self._send("501 5.5.4 Syntax: MAIL FROM:<address>")
                    elif sink.require_auth and not sess["auth_user"]:
                        self._send("530 5.7.0 Authentication required")
                    else:
                        fail = sink.take_failure("mail")
                        if fail:
                            self._send("%d 4.3.0 stand-in told to fail" % fail)
                        else:
                            sess["from"] = m.group(1)
                            sess["rcpt"] = []
                            self._send("250 2.1.0 OK")
                elif verb == "RCPT":
                    m = re.match(r"(?i)^TO:\s*<([^>]*)>", arg)
                    if sess["from"] is None:
                        self._send("503 5.5.1 MAIL first")
                    elif not m:
                        self._send("501 5.5.4 Syntax: RCPT TO:<address>")
                    else:
                        sess["rcpt"].append(m.group(1))
                        self._send("250 2.1.5 OK")
                elif verb == "DATA":
                    if not sess["rcpt"]:
                        self._send("503 5.5.1 RCPT first")
                        continue
                    self._send("354 End data with <CR><LF>.<CR><LF>")
                    raw = self._data()
                    fail = sink.take_failure("data")
                    if fail:
                        self._send("%d 4.3.0 stand-in told to fail" % fail)
                    else:
                        sink._store(sess, raw)
                        self._send("250 2.0.0 OK queued")
                    sess["from"], sess["rcpt"] = None, []
                elif verb == "RSET":
                    sess["from"], sess["rcpt"] = None, []
                    self._send("250 2.0.0 OK")
                elif verb == "NOOP":
                    self._send("250 2.0.0 OK")
                elif verb == "VRFY":
                    self._send("252 2.1.5 Cannot VRFY user")
                elif verb == "QUIT":
                    self._send("221 2.0.0 Bye")
                    return
                else:
                    self._send("502 5.5.2 Command not implemented")
        except (EOFError, OSError):
            return

    def _auth(self, sess, arg):
        sink = self.sink
        parts = arg.split(" ")
        mech = parts[0].upper()
        try:
            if mech == "PLAIN":
                resp = parts[1] if len(parts) > 1 else None
                if resp is None:
                    self._send("334 ")
                    resp = self._line()
                dec = base64.b64decode(resp, validate=True).split(b"\0")
                if len(dec) != 3:
                    raise ValueError("PLAIN needs authzid\\0user\\0password")
                user, password = dec[1].decode(), dec[2].decode()
            elif mech == "LOGIN":
                if len(parts) > 1:
                    user = base64.b64decode(parts[1], validate=True).decode()
                else:
                    self._send("334 VXNlcm5hbWU6")
                    user = base64.b64decode(self._line(), validate=True).decode()
                self._send("334 UGFzc3dvcmQ6")
                password = base64.b64decode(self._line(), validate=True).decode()
            else:
                self._send("504 5.5.4 Unrecognized authentication type")
                return
        except (ValueError, binascii.Error, UnicodeDecodeError):
            self._send("501 5.5.2 Cannot decode response")
            return
        ok = sink.user is None or (user == sink.user and password == sink.password)
        with sink.lock:
            sink.auths.append({"mech": mech, "user": user, "password": password, "ok": ok})
        if ok:
            sess["auth_user"] = user
            self._send("235 2.7.0 Authentication successful")
        else:
            self._send("535 5.7.8 Authentication credentials invalid")

    def _data(self):
        lines = []
        total = 0
        for _ in range(10000000):
            line = self.rfile.readline(1 << 20)
            if not line:
                raise EOFError
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b".."):
                line = line[1:]
            total += len(line)
            if total > MAX_BODY:
                raise EOFError
            lines.append(line)
        return b"".join(lines)


class SmtpSink:
    """An SMTP server keeping every mail: sink.mails is a list of dicts {mail_from, rcpt_to,
    auth_user, raw (bytes), message (email.message.EmailMessage), subject, from, to, text (the
    plain body or None), attachments [{filename, content_type, data (bytes)}], t}.

    user/password: when user is set, AUTH must present them (535 otherwise); require_auth makes
    MAIL FROM without a successful AUTH fail with 530. Knobs: fail_next N with fail_code (451)
    at fail_stage "mail" or "data"; down() / up()."""

    name = "smtp"
    KNOBS = ("fail_next", "fail_code", "fail_stage", "require_auth", "user", "password", "down")

    def __init__(self, user=None, password=None, require_auth=False):
        self.lock = threading.RLock()
        self.user, self.password = user, password
        self.require_auth = require_auth
        self.port = 0
        self.mails = []
        self.auths = []
        self.commands = []
        self.fail_next = 0
        self.fail_code = 451
        self.fail_stage = "data"
        self.is_down = False
        self._srv = None
        self._thread = None
        self._conns = set()

    def start(self):
        self._bind()
        return self

    def _bind(self):
        handler = type("SmtpHandler", (_SmtpHandler,), {"sink": self})
        last = None
        for _ in range(100):
            try:
                srv = _SmtpServer((LOOPBACK, self.port), handler)
                break
            except OSError as e:
                last = e
                time.sleep(0.05)
        else:
            raise OSError("smtp: cannot bind 127.0.0.1:%d: %s" % (self.port, last))
        self.port = srv.server_address[1]
        self._srv = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="smtp")
        self._thread.start()

    def _unbind(self):
        srv, self._srv = self._srv, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, conn, add):
        with self.lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def stop(self):
        self._unbind()

    def down(self):
        with self.lock:
            if self.is_down:
                return
            self.is_down = True
        self._unbind()

    def up(self):
        with self.lock:
            if not self.is_down:
                return
            self.is_down = False
        self._bind()

    def configure(self, **knobs):
        for k, v in knobs.items():
            if k not in self.KNOBS:
                raise ValueError("smtp: unknown knob %r" % k)
            if k == "down":
                (self.down if v else self.up)()
            else:
                with self.lock:
                    setattr(self, k, v)
        return self

    @property
    def url(self):
        return "smtp://%s:%d" % (LOOPBACK, self.port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def take_failure(self, stage):
        with self.lock:
            if self.fail_next > 0 and self.fail_stage == stage:
                self.fail_next -= 1
                return self.fail_code
        return None

    def _store(self, sess, raw):
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        attachments = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            fn = part.get_filename()
            disp = part.get_content_disposition()
            if fn is None and disp != "attachment":
                continue
            data = part.get_payload(decode=True) or b""
            attachments.append({"filename": fn, "content_type": part.get_content_type(),
                                "disposition": disp,
                                "transfer_encoding": part.get("Content-Transfer-Encoding"),
                                "data": data})
        text = None
        try:
            body = msg.get_body(preferencelist=("plain", "html"))
            if body is not None:
                text = body.get_content()
        except (KeyError, LookupError):
            text = None
        mail = {"mail_from": sess["from"], "rcpt_to": list(sess["rcpt"]),
                "auth_user": sess["auth_user"], "helo": sess["helo"], "raw": raw,
                "message": msg, "subject": str(msg["subject"]) if msg["subject"] else None,
                "from": str(msg["from"]) if msg["from"] else None,
                "to": str(msg["to"]) if msg["to"] else None, "text": text,
                "attachments": attachments, "t": time.monotonic()}
        with self.lock:
            self.mails.append(mail)

    def snapshot(self):
        with self.lock:
            return list(self.mails)

    def wait_mails(self, n, timeout=10, pred=None):
        deadline = time.monotonic() + timeout
        got = []
        for _ in range(int(timeout / 0.02) + 100):
            got = [m for m in self.snapshot() if pred is None or pred(m)]
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        raise AssertionError("smtp: timed out after %.1f s waiting for %d mails (have %d; "
                             "commands seen: %r)" % (timeout, n, len(got), self.commands[-20:]))


# ---------------------------------------------------------------------------------------------
# Alert URL sink


class AlertSink(HttpStandin):
    """Records every POST (path, headers, body, decoded JSON) and answers 200 {"ok":true};
    fail_next/fail_status, delay_ms and down() as the other stand-ins."""

    name = "alerts"

    def handle(self, call):
        status = self.take_failure()
        with self.lock:
            delay = self.delay_ms
        if delay and not self.hold(delay):
            return None
        if status is not None:
            return int(status), {}, _jbytes({"error": "stand-in told to fail"})
        if call["method"] != "POST":
            return 405, {}, _jbytes({"error": "POST only"})
        call["kind"] = "alert"
        return 200, {}, _jbytes({"ok": True})

    def alerts(self, pred=None):
        """JSON bodies of the POSTs answered 200, in arrival order."""
        out = [c["json"] for c in self.snapshot(lambda c: c.get("kind") == "alert" and
                                                c.get("status") == 200)]
        return [a for a in out if pred is None or pred(a)]

    def wait_alerts(self, n, pred=None, timeout=10):
        def check():
            got = self.alerts(pred)
            return got if len(got) >= n else None
        return self.wait_until(check, timeout, "%d alerts" % n)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the delivery suites (test_delivery*.py, test_crm*.py, test_alerts*.py)

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("WH_SOURCE_DIR") or os.path.abspath(os.path.join(_HERE, "..", ".."))
TERMINAL_OUTBOX = ("done", "dead")

# A main.lua driven by the inbound text: a message whose text is a JSON list of actions runs
# them (the contact's phone is the default recipient), so each scenario picks its actions per
# message without a script of its own. Entries:
#   {"send": "text", "delay": ms, "quote": true, "link_preview": false}
#   {"crm": "contact_upsert"|"activity"|"lead_score"|"task", "fields": {...}} (phone, name
#       default to the contact's; for activity: kind message_received and text default)
#   {"alert": "kind", "text": "...", "fields": {...}}
#   {"mail": ["a@b"], "subject": "...", "body": "...", "attachments": [...]}
# Any other text gets one reply "re: <text>". qrcode.updated mails the QR as a PNG attachment
# to scripts config `qr_to` when set; connection.update alerts on "close" and "open" when
# `close_alert` is set (kinds connection_closed / connection_restored, as scripts/alerts.lua).
DRIVER_LUA = r'''
local wahook = require "wahook"
local cjson = require "cjson"
local h = {}

local function int(v) if v == nil then return nil end return math.tointeger(v) or math.floor(v) end

-- cjson decodes every number as a float under Lua 5.4: make integral ones integers again
local function ints(v)
  if type(v) == "number" then return math.tointeger(v) or v end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = ints(x) end
  return out
end

local function run(ev, list)
  local m = ev.msg or {}
  for _, a in ipairs(ints(list)) do
    if a.send then
      local opts = {}
      if a.delay then opts.delay = int(a.delay) end
      if a.quote then opts.quoted = m.id end
      if a.link_preview ~= nil then opts.link_preview = a.link_preview end
      if next(opts) == nil then opts = nil end
      wahook.send_text(a.to or m.phone, a.send, opts)
    elseif a.crm then
      local f = a.fields or {}
      if f.phone == nil then f.phone = m.phone end
      if a.crm == "contact_upsert" then
        if f.name == nil then f.name = m.push_name end
        if f.last_message == nil then f.last_message = m.text end
        if f.last_message_at == nil then
          f.last_message_at = os.date("!%Y-%m-%dT%H:%M:%SZ", math.tointeger(m.timestamp) or os.time())
        end
      end
      if a.crm == "activity" then
        f.kind = f.kind or "message_received"
        f.text = f.text or m.text
      end
      wahook.crm(a.crm, f)
    elseif a.alert then
      local f = a.fields or {}
      f.instance = f.instance or ev.instance
      wahook.alert(a.alert, a.text or "alert", f)
    elseif a.mail then
      wahook.mail(a.mail, a.subject or "wahook", a.body or "", a.attachments)
    end
  end
end

h["messages.upsert"] = function(ev)
  local m = ev.msg or {}
  local text = m.text or ""
  if text:sub(1, 1) == "[" then
    local ok, list = pcall(cjson.decode, text)
    if ok and type(list) == "table" then return run(ev, list) end
  end
  if m.phone and text ~= "" and not m.from_me then
    wahook.send_text(m.phone, "re: " .. text)
  end
end

h["qrcode.updated"] = function(ev)
  local cfg = wahook.config or {}
  local qr = ev.data and ev.data.qrcode
  if cfg.qr_to and qr and qr.base64 then
    wahook.mail(cfg.qr_to, "QR code for " .. ev.instance, "Scan the attached QR code.",
                {{filename = "qr.png", data_url = qr.base64}})
  end
end

h["connection.update"] = function(ev)
  local cfg = wahook.config or {}
  local st = ev.data and ev.data.state
  if cfg.close_alert and st == "close" then
    wahook.alert("connection_closed", "WhatsApp instance " .. ev.instance .. " is " .. st,
                 {instance = ev.instance, state = st})
  elseif cfg.close_alert and st == "open" then
    wahook.alert("connection_restored", "WhatsApp instance " .. ev.instance .. " is open",
                 {instance = ev.instance, state = st})
  end
end

return h
'''


def actions_text(*actions):
    """The inbound text that makes DRIVER_LUA run these actions."""
    return json.dumps(list(actions), ensure_ascii=False, separators=(",", ":"))


def install_delivery_scripts(scripts_dir, main_lua=DRIVER_LUA, extra=None):
    """A scripts dir: lib/normalize.lua and crm/*.lua copied from the repository, main.lua."""
    os.makedirs(os.path.join(scripts_dir, "lib"), exist_ok=True)
    shutil.copyfile(os.path.join(SOURCE_DIR, "scripts", "lib", "normalize.lua"),
                    os.path.join(scripts_dir, "lib", "normalize.lua"))
    crm_src = os.path.join(SOURCE_DIR, "scripts", "crm")
    if os.path.isdir(crm_src):
        os.makedirs(os.path.join(scripts_dir, "crm"), exist_ok=True)
        for fn in os.listdir(crm_src):
            if fn.endswith(".lua"):
                shutil.copyfile(os.path.join(crm_src, fn), os.path.join(scripts_dir, "crm", fn))
    with open(os.path.join(scripts_dir, "main.lua"), "w", encoding="utf-8") as f:
        f.write(main_lua)
    for rel, text in (extra or {}).items():
        p = os.path.join(scripts_dir, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)


def delivery_top(evolution=None, twenty=None, smtp=None, alerts=None, evo_key="k",
                 crm_key=None, delivery=None, evolution_opts=None, crm_opts=None,
                 smtp_opts=None, alert_emails=None, alert_format=None, watchdog=None,
                 scripts_config=None, extra=""):
    """Top-level config for a delivery scenario. Delivery retries are fast (100 ms .. 500 ms),
    circuits open for 1 s, pacing is lifted for Evolution (a test is not a WhatsApp number to
    protect), the watchdog is off unless `watchdog` gives its settings."""
    out = []

    def block(name, items):
        out.append(name + ":")
        for k, v in items.items():
            out.append("  %s: %s" % (k, v))

    d = {"retry-base": "100ms", "retry-max": "500ms", "circuit-open": "1s"}
    d.update(delivery or {})
    block("wahook.delivery", d)
    if evolution is not None:
        e = {"url": evolution.url, "api-key": evo_key, "rate-per-minute": 100000,
             "burst": 1000}
        e.update(evolution_opts or {})
        block("wahook.evolution", e)
    if twenty is not None:
        c = {"url": twenty.url, "api-key": crm_key or twenty.api_key}
        c.update(crm_opts or {})
        block("wahook.crm", c)
    if smtp is not None:
        s = {"url": smtp.url, "from": "wahook@test.invalid"}
        s.update(smtp_opts or {})
        block("wahook.smtp", s)
    a = {}
    if alerts is not None:
        a["urls"] = "[%s/alerts]" % alerts.url
    if alert_emails:
        a["emails"] = "[%s]" % ", ".join(alert_emails)
    if alert_format:
        a["format"] = alert_format
    if a:
        block("wahook.alerts", a)
    w = {"interval": 0}
    w.update(watchdog or {})
    block("wahook.watchdog", w)
    if scripts_config:
        out.append("wahook.scripts.config:")
        for k, v in scripts_config.items():
            out.append("  %s: %s" % (k, json.dumps(v)))
    if extra:
        out.append(extra.strip("\n"))
    return "\n".join(out) + "\n"


def outbox(srv, target=None, status=None):
    """Outbox rows (dicts, payload decoded into payload_json) oldest first."""
    sql = "SELECT * FROM outbox"
    cond, args = [], []
    if target:
        cond.append("target = ?")
        args.append(target)
    if status:
        cond.append("status = ?")
        args.append(status)
    if cond:
        sql += " WHERE " + " AND ".join(cond)
    rows = srv.query(sql + " ORDER BY id", args)
    for r in rows:
        try:
            r["payload_json"] = json.loads(r["payload"])
        except (TypeError, ValueError):
            r["payload_json"] = None
    return rows


def wait_outbox(srv, n, target=None, want=TERMINAL_OUTBOX, timeout=20, what=None):
    """Waits until at least n rows of target exist and every one of them is in want; returns
    the rows."""
    deadline = time.monotonic() + timeout
    rows = []
    for _ in range(int(timeout / 0.05) + 100):
        rows = outbox(srv, target)
        if len(rows) >= n and all(r["status"] in want for r in rows):
            return rows
        if time.monotonic() > deadline:
            break
        srv.check_alive()
        time.sleep(0.05)
    summary = collections.Counter(r["status"] for r in rows)
    raise AssertionError("timed out after %.1f s waiting for %s (%d rows: %s; last errors %r)\n%s" % (
        timeout, what or "%d %s outbox rows to reach %s" % (n, target or "", "/".join(want)),
        len(rows), dict(summary), [r["last_error"] for r in rows if r["last_error"]][-3:],
        srv.tail(30)))


class DeliveryCase:
    """Mixin for harness.WahookTestCase suites: stand-ins stopped after the test, a server
    with its own scripts dir (DRIVER_LUA by default, the repository's CRM modules), posting."""

    def standin(self, obj):
        obj.start()
        self.addCleanup(obj.stop)
        return obj

    def evolution(self, **kw):
        return self.standin(EvolutionStandin(**kw))

    def twenty(self, **kw):
        return self.standin(TwentyStandin(**kw))

    def smtp(self, **kw):
        return self.standin(SmtpSink(**kw))

    def alert_sink(self):
        return self.standin(AlertSink())

    def server(self, top, main_lua=DRIVER_LUA, start=True, threads=2, extra=None):
        import proc_helpers as ph
        from harness import make_conf
        srv = self.new_server(make_conf(ph.ROUTE, top=top, threads=threads,
                                        scripts="@TMP@/scripts"), start=False)
        install_delivery_scripts(os.path.join(srv.tmp, "scripts"), main_lua, extra)
        if start:
            srv.start()
        return srv

    _mids = iter(range(1, 10 ** 9))

    def new_mid(self, tag="D"):
        return "%s%010d%08X" % (tag, next(self._mids), int(time.time() * 1000) & 0xFFFFFFFF)

    def post_text(self, srv, text, phone="34600111222", mid=None, push_name=None, lid=None):
        """Posts a messages.upsert text from phone (no LID alias unless lid); returns the event
        id."""
        import proc_helpers as ph
        body = ph.text_body(mid or self.new_mid(), text=text, phone=phone, lid=lid,
                            push_name=push_name)
        return ph.post(self, srv, body)

    def post_actions(self, srv, *actions, **kw):
        return self.post_text(srv, actions_text(*actions), **kw)

    def post_obj(self, srv, obj):
        import proc_helpers as ph
        from harness import compact
        return ph.post(self, srv, compact(obj))

    def fixture_obj(self, name):
        from harness import fixture
        return fixture(name)

    def send_message_echo(self, srv, phone, text, wa_id=None):
        """Posts the send.message webhook Evolution emits for an API send (the echo)."""
        obj = self.fixture_obj("send-message")
        obj["data"]["key"]["id"] = wa_id or new_wa_id()
        obj["data"]["key"]["remoteJid"] = "%s@s.whatsapp.net" % phone
        obj["data"]["message"]["conversation"] = text
        obj["data"]["messageTimestamp"] = int(time.time())
        return self.post_obj(srv, obj), obj["data"]["key"]["id"]

    def wait_events(self, srv, ids, timeout=15):
        import proc_helpers as ph
        return ph.wait_status(srv, ids, ("done",), timeout=timeout)


# ---------------------------------------------------------------------------------------------
# self-test (run by hand: python3 tests/integration/standins.py)


def _req(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        data = body if isinstance(body, (bytes, type(None))) else _jbytes(body)
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        try:
            obj = json.loads(raw) if raw else None
        except ValueError:
            obj = None
        return r.status, {k.lower(): v for k, v in r.getheaders()}, obj
    finally:
        c.close()


def _selftest_evolution():
    evo = EvolutionStandin(apikey="k").start()
    try:
        p = evo.port
        st, _, b = _req(p, "POST", "/message/sendText/acme-bot", {"number": "34600111222",
                                                                 "text": "Hola 👋"},
                        {"apikey": "k"})
        assert st == 201, (st, b)
        assert b["key"]["id"].startswith("3EB0") and len(b["key"]["id"]) == 22, b
        assert b["key"]["remoteJid"] == "34600111222@s.whatsapp.net" and b["status"] == "PENDING"
        assert b["message"]["conversation"] == "Hola 👋"
        st, _, b = _req(p, "POST", "/message/sendText/acme-bot", {"number": "1", "text": "x"},
                        {"apikey": "bad"})
        assert st == 401 and b["response"]["message"] == "Unauthorized", b
        st, _, b = _req(p, "POST", "/message/sendText/other", {"number": "1", "text": "x"},
                        {"apikey": "k"})
        assert st == 404 and "does not exist" in b["response"]["message"][0], b
        st, _, b = _req(p, "POST", "/message/sendText/acme-bot", {"number": "346"},
                        {"apikey": "k"})
        assert st == 400 and "text" in b["response"]["message"][0], b
        evo.configure(exists_false=["+34 600 000 000"])
        st, _, b = _req(p, "POST", "/message/sendText/acme-bot",
                        {"number": "34600000000", "text": "x"}, {"apikey": "k"})
        assert st == 400 and b["response"]["message"][0]["exists"] is False, b
        evo.configure(fail_next=2, fail_status=503, fail_retry_after=2)
        st1, h1, _ = _req(p, "POST", "/message/sendText/acme-bot", {"number": "1", "text": "a"},
                          {"apikey": "k"})
        st2, _, _ = _req(p, "POST", "/message/sendText/acme-bot", {"number": "1", "text": "a"},
                         {"apikey": "k"})
        st3, _, _ = _req(p, "POST", "/message/sendText/acme-bot", {"number": "1", "text": "a"},
                         {"apikey": "k"})
        assert (st1, st2, st3) == (503, 503, 201) and h1.get("retry-after") == "2", (st1, st2, st3)
        evo.configure(fail_retry_after=None, fail_next_for={"34611": 1})
        st, _, _ = _req(p, "POST", "/message/sendText/acme-bot", {"number": "34611", "text": "a"},
                        {"apikey": "k"})
        st2, _, _ = _req(p, "POST", "/message/sendText/acme-bot",
                         {"number": "34611", "text": "a"}, {"apikey": "k"})
        assert (st, st2) == (503, 201), (st, st2)
        # the body's delay holds the call; delay_next holds one call
        t0 = time.monotonic()
        st, _, _ = _req(p, "POST", "/message/sendText/acme-bot",
                        {"number": "1", "text": "slow", "delay": 300}, {"apikey": "k"})
        assert st == 201 and time.monotonic() - t0 >= 0.29
        st, _, b = _req(p, "GET", "/instance/connectionState/acme-bot", None, {"apikey": "k"})
        assert st == 200 and b == {"instance": {"instanceName": "acme-bot", "state": "open"}}, b
        # control over HTTP, on the control port
        st, _, _ = _req(evo.ctl_port, "POST", "/_control", {"states": {"acme-bot": "close"}})
        assert st == 200
        st, _, b = _req(p, "GET", "/instance/connectionState/acme-bot", None, {"apikey": "k"})
        assert b["instance"]["state"] == "close", b
        # go away and come back on the same port
        evo.down()
        try:
            socket.create_connection((LOOPBACK, p), timeout=2).close()
            raise AssertionError("connect must be refused while down")
        except ConnectionRefusedError:
            pass
        st, _, b = _req(evo.ctl_port, "GET", "/_state")
        assert st == 200 and b["down"] is True, b
        evo.up()
        assert evo.port == p
        st, _, _ = _req(p, "POST", "/message/sendText/acme-bot", {"number": "1", "text": "back"},
                        {"apikey": "k"})
        assert st == 201
        assert evo.texts(number="1")[-1] == "back"
        st, _, calls = _req(evo.ctl_port, "GET", "/_calls")
        assert st == 200 and calls[-1]["json"]["text"] == "back", calls[-1]
        # a client that times out: the call is still recorded
        evo.configure(delay_next=[1500])
        c = http.client.HTTPConnection(LOOPBACK, p, timeout=0.3)
        try:
            c.request("POST", "/message/sendText/acme-bot", body=_jbytes(
                {"number": "1", "text": "timeout"}), headers={"apikey": "k",
                                                              "Content-Type": "application/json"})
            c.getresponse()
            raise AssertionError("expected a client timeout")
        except socket.timeout:
            pass
        finally:
            c.close()
        assert evo.sends(number="1")[-1]["text"] == "timeout"
    finally:
        evo.stop()
    print("evolution: ok")


def _selftest_twenty():
    tw = TwentyStandin(api_key="tk").start()
    try:
        p = tw.port
        A = {"Authorization": "Bearer tk"}
        st, _, b = _req(p, "GET", "/rest/people", None, {"Authorization": "Bearer nope"})
        assert st == 401 and b["error"] == "UNAUTHENTICATED", b
        st, _, b = _req(p, "POST", "/rest/person", {}, A)
        assert st == 400 and "Did you mean 'people'" in b["messages"][0], b
        st, _, b = _req(p, "POST", "/rest/contacts", {}, A)
        assert st == 400 and b["messages"][0] == "object 'contacts' not found. eg: companies", b
        st, _, b = _req(p, "PATCH", "/rest/people/34600111222", {"leadScore": 3}, A)
        assert st == 400 and "is not a valid UUID" in b["messages"][0], b
        st, _, b = _req(p, "PATCH", "/rest/contacts/34600111222/score", {}, A)
        assert st == 400, b
        pid = str(uuid.uuid5(uuid.NAMESPACE_URL, "acme-bot:+34600111222"))
        body = {"id": pid, "name": {"firstName": "María", "lastName": "López"},
                "phones": {"primaryPhoneNumber": "+34600111222"}, "leadScore": 40}
        st, _, b = _req(p, "POST", "/rest/people?upsert=true&depth=0", body, A)
        assert st == 201, b
        ph = b["data"]["createPerson"]["phones"]
        assert ph == {"primaryPhoneNumber": "600111222", "primaryPhoneCallingCode": "+34",
                      "primaryPhoneCountryCode": "ES", "additionalPhones": None}, ph
        # the same id again: upsert updates; without upsert it is a duplicate key
        st, _, b = _req(p, "POST", "/rest/people?upsert=true", dict(body, leadScore=50), A)
        assert st == 201 and b["data"]["createPerson"]["leadScore"] == 50
        st, _, b = _req(p, "POST", "/rest/people", body, A)
        assert st == 400 and "duplicate key" in b["messages"][0], b
        assert len(tw.people()) == 1
        # phone rules
        st, _, b = _req(p, "POST", "/rest/people", {"phones": {"primaryPhoneNumber":
                                                               "34600111222"}}, A)
        assert st == 400 and "invalid" in b["messages"][0], b
        st, _, b = _req(p, "POST", "/rest/people", {"phones": {
            "primaryPhoneNumber": "+34600111222", "primaryPhoneCallingCode": "+1"}}, A)
        assert st == 400 and "conflicting" in b["messages"][0], b
        st, _, b = _req(p, "POST", "/rest/people", {"phones": {
            "primaryPhoneNumber": "4155552671", "primaryPhoneCallingCode": "+1",
            "primaryPhoneCountryCode": "US"}}, A)
        assert st == 201 and b["data"]["createPerson"]["phones"]["primaryPhoneNumber"] == \
            "4155552671", b
        st, _, b = _req(p, "POST", "/rest/people", {"nope": 1}, A)
        assert st == 400 and "doesn't have any \"nope\" field" in b["messages"][0], b
        # find by phone with the URL-encoded filter of the reference (+ as %2B)
        f = 'and(phones.primaryPhoneNumber[eq]:"600111222",phones.primaryPhoneCallingCode[eq]:"+34")'
        st, _, b = _req(p, "GET", "/rest/people?depth=0&limit=2&filter=" +
                        urllib.parse.quote(f, safe=""), None, A)
        assert st == 200 and [x["id"] for x in b["data"]["people"]] == [pid], b
        assert b["totalCount"] == 1 and b["pageInfo"]["hasNextPage"] is False
        # an unencoded + arrives as a space: no match (like the real server)
        st, _, b = _req(p, "GET", "/rest/people?filter=" + f.replace('"', "%22"), None, A)
        assert st == 200 and b["data"]["people"] == [], b
        st, _, b = _req(p, "GET", "/rest/people?filter=" + urllib.parse.quote(
            'or(phones.primaryPhoneNumber[like]:"%0111222",leadScore[gte]:100)', safe=""),
            None, A)
        assert [x["id"] for x in b["data"]["people"]] == [pid], b
        st, _, b = _req(p, "GET", "/rest/people?filter=" + urllib.parse.quote(
            "not(leadScore[is]:NULL)", safe=""), None, A)
        assert [x["id"] for x in b["data"]["people"]] == [pid], b
        st, _, b = _req(p, "GET", "/rest/people?filter=" + urllib.parse.quote(
            "bogus[eq]:1", safe=""), None, A)
        assert st == 400, b
        st, _, b = _req(p, "GET", "/rest/people?filter=" + urllib.parse.quote(
            "leadScore[eq]:50", safe=""), None, A)
        assert len(b["data"]["people"]) == 1, b
        st, _, b = _req(p, "GET", "/rest/people?depth=2", None, A)
        assert st == 400, b
        # PATCH merges composite sub-fields
        st, _, b = _req(p, "PATCH", "/rest/people/%s?depth=0" % pid, {"leadScore": 75}, A)
        assert st == 200 and b["data"]["updatePerson"]["leadScore"] == 75
        assert b["data"]["updatePerson"]["name"]["firstName"] == "María"
        # notes and the link-field names
        st, _, b = _req(p, "POST", "/rest/notes?depth=0", {"title": "WhatsApp", "bodyV2": {
            "markdown": "**10:02 Ana:** Olá"}}, A)
        assert st == 201 and isinstance(b["data"]["createNote"]["bodyV2"]["blocknote"], str)
        nid = b["data"]["createNote"]["id"]
        st, _, b = _req(p, "POST", "/rest/noteTargets", {"noteId": nid, "personId": pid}, A)
        assert st == 400 and "personId" in b["messages"][0], b
        st, _, b = _req(p, "POST", "/rest/noteTargets", {"noteId": nid, "targetPersonId": pid}, A)
        assert st == 201 and b["data"]["createNoteTarget"]["targetPersonId"] == pid, b
        st, _, b = _req(p, "POST", "/rest/noteTargets", {"noteId": str(uuid.uuid4()),
                                                         "targetPersonId": pid}, A)
        assert st == 400 and "foreign key" in b["messages"][0], b
        assert [n for n, c in tw.notes_of(pid) if c == 1][0]["id"] == nid
        tw.configure(link_style="legacy")
        st, _, b = _req(p, "POST", "/rest/noteTargets", {"noteId": nid, "targetPersonId": pid}, A)
        assert st == 400, b
        tw.configure(link_style="target")
        st, _, b = _req(p, "POST", "/rest/tasks", {"title": "Call", "status": "LATER"}, A)
        assert st == 400, b
        st, _, b = _req(p, "POST", "/rest/batch/people?upsert=true", [
            {"id": pid, "leadScore": 1}, {"phones": {"primaryPhoneNumber": "+5511987654321"}}], A)
        assert st == 201 and len(b["data"]["createPeople"]) == 2, b
        assert b["data"]["createPeople"][1]["phones"]["primaryPhoneNumber"] == "11987654321"
        st, _, b = _req(p, "POST", "/rest/batch/people", {}, A)
        assert st == 400 and b["messages"][0] == "Body must be an array"
        st, _, b = _req(p, "GET", "/rest/metadata/objects", None, A)
        nt = [o for o in b["data"]["objects"] if o["nameSingular"] == "noteTarget"][0]
        assert "targetPersonId" in [f["name"] for f in nt["fields"]]
        # rules: hang (not applied) and apply_drop (applied, no answer)
        tw.configure(rules=[{"method": "POST", "path": "/rest/noteTargets", "action": "hang"}])
        res = {}

        def bg():
            try:
                res["r"] = _req(p, "POST", "/rest/noteTargets", {"noteId": nid,
                                                                 "targetPersonId": pid}, A)
            except (OSError, http.client.HTTPException) as e:
                res["e"] = e
        t = threading.Thread(target=bg)
        t.start()
        tw.wait_calls(1, lambda c: c.get("rule") == "hang", timeout=5)
        n_before = len(tw.note_targets())
        tw.release()
        t.join(5)
        assert "e" in res and len(tw.note_targets()) == n_before, res
        tw.configure(rules=[{"path": "/rest/noteTargets", "action": "apply_drop"}])
        try:
            _req(p, "POST", "/rest/noteTargets", {"noteId": nid, "targetPersonId": pid}, A)
            raise AssertionError("apply_drop must not answer")
        except (OSError, http.client.HTTPException):
            pass
        assert len(tw.note_targets()) == n_before + 1
        # the sliding window: limit 5 per 1 s
        tw.configure(window_s=1.0, limit=5)
        time.sleep(1.05)
        codes = [_req(p, "GET", "/rest/notes?limit=1", None, A)[0] for _ in range(7)]
        assert codes == [200] * 5 + [429] * 2, codes
        st, h, b = _req(p, "GET", "/rest/notes", None, A)
        assert st == 429 and int(h["retry-after"]) >= 1 and b["error"] == "RATE_LIMITED", (h, b)
        time.sleep(1.05)
        assert _req(p, "GET", "/rest/notes", None, A)[0] == 200
        assert tw.max_window(1.0) >= 8
    finally:
        tw.stop()
    assert max_in_window([0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    print("twenty: ok")


def _selftest_smtp():
    import smtplib
    from email.message import EmailMessage
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    sink = SmtpSink(user="u", password="p", require_auth=True).start()
    try:
        msg = EmailMessage()
        msg["From"] = "wahook@test.invalid"
        msg["To"] = "ops@example.com"
        msg["Subject"] = "QR code for acme-bot"
        msg.set_content("Scan it.\n.leading dot line\n")
        msg.add_attachment(png, maintype="image", subtype="png", filename="qr.png")
        with smtplib.SMTP(LOOPBACK, sink.port, timeout=10) as s:
            s.ehlo()
            try:
                s.send_message(msg)
                raise AssertionError("MAIL without AUTH must fail")
            except smtplib.SMTPSenderRefused as e:
                assert e.smtp_code == 530
            s.login("u", "p")
            s.send_message(msg)
        m = sink.wait_mails(1)[0]
        assert m["rcpt_to"] == ["ops@example.com"] and m["auth_user"] == "u", m
        assert m["subject"] == "QR code for acme-bot"
        assert ".leading dot line" in m["text"], m["text"]
        att = m["attachments"]
        assert len(att) == 1 and att[0]["filename"] == "qr.png" and \
            att[0]["content_type"] == "image/png" and att[0]["data"] == png, att
        # libcurl, as wahook uses it (AUTH LOGIN/PLAIN, MAIL, RCPT, DATA, QUIT)
        import subprocess
        if shutil.which("curl"):
            raw = b"From: a@b.c\r\nTo: x@y.z\r\nSubject: curl\r\n\r\nhello\r\n.dot\r\n"
            r = subprocess.run(["curl", "-sS", "--max-time", "10", "--url", sink.url,
                                "--mail-from", "a@b.c", "--mail-rcpt", "x@y.z",
                                "--mail-rcpt", "w@y.z", "--user", "u:p", "-T", "-"],
                               input=raw, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=20)
            assert r.returncode == 0, r.stderr
            m = sink.wait_mails(2)[1]
            assert m["rcpt_to"] == ["x@y.z", "w@y.z"] and m["subject"] == "curl", m
            assert m["text"].replace("\r\n", "\n") == "hello\n.dot\n", repr(m["text"])
            sink.configure(fail_next=1)
            r = subprocess.run(["curl", "-sS", "--max-time", "10", "--url", sink.url,
                                "--mail-from", "a@b.c", "--mail-rcpt", "x@y.z", "--user", "u:p",
                                "-T", "-"], input=raw, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=20)
            assert r.returncode != 0 and len(sink.snapshot()) == 2, r
            sink.configure(user="u", password="other")
            r = subprocess.run(["curl", "-sS", "--max-time", "10", "--url", sink.url,
                                "--mail-from", "a@b.c", "--mail-rcpt", "x@y.z", "--user", "u:p",
                                "-T", "-"], input=raw, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=20)
            assert r.returncode != 0 and sink.auths[-1]["ok"] is False, r
        sink.down()
        try:
            socket.create_connection((LOOPBACK, sink.port), timeout=2).close()
            raise AssertionError("connect must be refused while down")
        except ConnectionRefusedError:
            pass
        sink.up()
        socket.create_connection((LOOPBACK, sink.port), timeout=2).close()
    finally:
        sink.stop()
    print("smtp: ok")


def _selftest_alerts():
    a = AlertSink().start()
    try:
        st, _, b = _req(a.port, "POST", "/alerts", {"kind": "x", "text": "y"})
        assert st == 200 and b == {"ok": True}
        a.configure(fail_next=1, fail_status=503)
        assert _req(a.port, "POST", "/alerts", {"kind": "z"})[0] == 503
        assert a.alerts() == [{"kind": "x", "text": "y"}], a.alerts()
        assert a.wait_alerts(1, lambda x: x["kind"] == "x")[0]["text"] == "y"
    finally:
        a.stop()
    print("alerts: ok")


if __name__ == "__main__":
    t0 = time.monotonic()
    _selftest_evolution()
    _selftest_twenty()
    _selftest_smtp()
    _selftest_alerts()
    print("standins self-test passed in %.1f s" % (time.monotonic() - t0))
