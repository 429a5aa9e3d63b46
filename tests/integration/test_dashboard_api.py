"""The dashboard and its admin API on the admin listener (issue 6 "Dashboard", "Never block the
webhook path"): static files at /dashboard, the token login trading the admin token for a
random, expiring, server-side session cookie (HttpOnly, SameSite=Strict, rate-limited), and the
endpoints the dashboard owns — /api/session, /api/login, /api/logout, /api/events (listing),
/api/events/stream (Server-Sent Events: filters, heartbeat, Last-Event-ID, client cap, slow-client
cut, closed on shutdown), /api/instances (connection state and QR) and /api/try (dry runs) — each
refusing requests without the token or a session and validating its inputs."""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time

import harness
import proc_helpers as ph
from harness import compact, fixture

ADMIN_TOKEN = "admintok"  # make_conf's admin token
BEARER = {"Authorization": "Bearer " + ADMIN_TOKEN}
COOKIE = "wahook_session"
WEB_DIR = os.path.join(harness.SOURCE_DIR, "runtime", "web")

# Handlers of the suites' servers: a reply that shows the prior state, a failure on demand (dead
# at once with max-attempts 1), and a handler that spins until the script deadline.
MAIN_LUA = ph.handlers("""
h["messages.upsert"] = function(ev)
  local text = ev.msg and ev.msg.text or ""
  if text == "boom" then error("boom: the handler failed on purpose") end
  if text == "spin" then while true do end end
  local st = wahook.state.get() or {}
  wahook.send_text(ev.msg.phone, "hola " .. tostring(st.n or 0))
  wahook.state.set({n = (st.n or 0) + 1})
end
""")

BASE = """
wahook.processing.max-attempts: 1
wahook.scripts.timeout: 1s
wahook.dashboard.sse-heartbeat: 300ms
"""
# The shared server sees many logins from the suite: its limit is out of the way.
TOP = BASE + "wahook.dashboard.login-rate-per-minute: 1000\n"


def dash_server(tc, top=TOP, start=True):
    """A server for one test with the suite's scripts (stopped after the test)."""
    return ph.script_server(tc, MAIN_LUA, top=top, start=start)


def admin(srv, method, path, body=None, headers=None, **kw):
    return harness.request(srv.admin_port, method, path, body, headers, **kw)


def login(tc, srv, token=ADMIN_TOKEN, headers=None):
    """POSTs the token; returns (resp, cookie value or None)."""
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    r = admin(srv, "POST", "/api/login", json.dumps({"token": token}), h)
    return r, cookie_of(r)


def cookie_of(resp):
    sc = resp.header("set-cookie") or ""
    m = re.match(r"\s*%s=([^;]*)" % COOKIE, sc)
    return m.group(1) if m else None


def with_cookie(value, extra=None):
    h = {"Cookie": "%s=%s" % (COOKIE, value)}
    h.update(extra or {})
    return h


def post_event(tc, srv, body):
    return ph.post(tc, srv, body)


# ---------------------------------------------------------------------------------------------
# a Server-Sent Events client on a raw socket: the stream as it is on the wire


class SSE:
    """GETs path on port and decodes the response: status, headers, then the chunked body as
    SSE messages (events: dicts with id/event/data) and comments. Every wait is bounded."""

    def __init__(self, port, path, headers=None, rcvbuf=None, read=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        h = {"Host": "127.0.0.1", "Accept": "text/event-stream"}
        h.update(headers or {})
        head = "GET %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % kv for kv in h.items())
        self.sock.sendall((head + "\r\n").encode("latin-1"))
        self.sock.setblocking(False)
        self.raw = b""
        self.status = None
        self.headers = {}
        self.body = b""     # de-chunked
        self.ended = False  # the last chunk arrived (a clean end of the response)
        self.eof = False    # the connection closed
        self.events = []
        self.comments = []
        self._parsed = 0
        self._chunked = False
        self._length = None

    def close(self):
        self.sock.close()

    def pump(self, timeout=0.05):
        if self.eof:
            return
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
        self.raw += data
        self._decode()

    def _decode(self):
        if self.status is None:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.raw[:end].decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()
            self.raw = self.raw[end + 4:]
            self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
            if "content-length" in self.headers:
                self._length = int(self.headers["content-length"])
        if self._chunked:
            while True:
                nl = self.raw.find(b"\r\n")
                if nl < 0:
                    break
                size = int(self.raw[:nl].split(b";")[0], 16)
                if size == 0:
                    self.ended = True
                    self.raw = b""
                    break
                if len(self.raw) < nl + 2 + size + 2:
                    break
                self.body += self.raw[nl + 2:nl + 2 + size]
                self.raw = self.raw[nl + 2 + size + 2:]
        else:
            self.body += self.raw
            self.raw = b""
            if self._length is not None and len(self.body) >= self._length:
                self.ended = True
        self._parse_sse()

    def _parse_sse(self):
        if not self.headers.get("content-type", "").startswith("text/event-stream"):
            return
        text = self.body.decode("utf-8", "replace")
        while True:
            end = text.find("\n\n", self._parsed)
            if end < 0:
                break
            block = text[self._parsed:end]
            self._parsed = end + 2
            msg = {}
            data = []
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                k, _, v = line.partition(":")
                v = v[1:] if v.startswith(" ") else v
                if k == "data":
                    data.append(v)
                elif k in ("id", "event", "retry"):
                    msg[k] = v
            if data:
                msg["data"] = "\n".join(data)
                msg["json"] = json.loads(msg["data"])
                self.events.append(msg)

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.02) + 100):
            if pred(self):
                return
            if time.monotonic() > deadline or (self.eof and not pred(self) and self.raw == b""):
                break
            self.pump(0.02)
        if pred(self):
            return
        raise AssertionError("SSE: timed out after %.1f s waiting for %s (status %r, %d events, "
                             "comments %r, eof %r, body tail %r)" % (
                                 timeout, what, self.status, len(self.events),
                                 self.comments[-3:], self.eof, self.body[-300:]))

    def wait_status(self, timeout=10):
        self.wait(lambda s: s.status is not None, timeout, "the response head")
        return self.status

    def ids(self):
        return [int(e["id"]) for e in self.events if "id" in e]

    def wait_ids(self, ids, timeout=10):
        want = set(ids)
        self.wait(lambda s: want <= set(s.ids()), timeout, "events %s" % sorted(want))


# ---------------------------------------------------------------------------------------------


class DashboardApi(harness.WahookTestCase):
    """One server shared by the tests that do not need their own settings."""

    @classmethod
    def setUpClass(cls):
        s = harness.Server(ph.script_conf(TOP), name=cls.__name__)
        cls.class_servers = [s]
        ph.install_scripts(s, MAIN_LUA)
        try:
            s.start()
        except Exception:
            s.cleanup()
            raise
        cls.srv = s

    # -- static files

    def test_static_files(self):
        srv = self.srv
        r = admin(srv, "GET", "/dashboard")
        self.assertReply(r, 301, srv)
        self.assertEqual(r.header("location"), "/dashboard/")
        r = admin(srv, "GET", "/dashboard/")
        self.assertReply(r, 200, srv)
        self.assertTrue(r.header("content-type").startswith("text/html"), r.headers)
        with open(os.path.join(WEB_DIR, "index.html"), "rb") as f:
            self.assertEqual(r.body, f.read(), "index.html is served as it is on disk")
        csp = r.header("content-security-policy") or ""
        self.assertIn("default-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertEqual(r.header("x-content-type-options"), "nosniff")
        for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"),
                            ("examples/index.json", "application/json")):
            r = admin(srv, "GET", "/dashboard/" + name)
            self.assertReply(r, 200, srv, name)
            self.assertTrue(r.header("content-type").startswith(ctype), (name, r.headers))
            with open(os.path.join(WEB_DIR, name), "rb") as f:
                self.assertEqual(r.body, f.read(), name)
        # The page loads nothing from elsewhere (no CDN).
        for name in ("index.html", "app.js", "style.css"):
            with open(os.path.join(WEB_DIR, name), encoding="utf-8") as f:
                text = f.read()
            self.assertNotRegex(text, r"(src|href)=[\"']?(https?:)?//", name)
            self.assertNotRegex(text, r"@import|url\(\s*['\"]?https?:", name)
        for bad in ("/dashboard/nope.js", "/dashboard/../wahook.conf", "/dashboard/%2e%2e/x",
                    "/dashboard/examples", "/dashboardx"):
            r = admin(srv, "GET", bad)
            self.assertReply(r, 404, srv, bad)
        r = admin(srv, "POST", "/dashboard/", b"x", {"Content-Type": "text/plain"})
        self.assertReply(r, 405, srv)

    def test_examples_are_events(self):
        """The playground's examples ship in the repository and are webhook events."""
        srv = self.srv
        idx = admin(srv, "GET", "/dashboard/examples/index.json").json()
        self.assertGreaterEqual(len(idx["examples"]), 5)
        for ex in idx["examples"]:
            r = admin(srv, "GET", "/dashboard/examples/" + ex["file"])
            self.assertReply(r, 200, srv, ex["file"])
            obj = r.json()
            self.assertIsInstance(obj.get("event"), str, ex["file"])
            self.assertIn("data", obj, ex["file"])
            self.assertTrue(ex.get("title"), ex)

    # -- authentication

    def test_auth_required_everywhere(self):
        srv = self.srv
        ep = [("GET", "/api/session"), ("GET", "/api/events"), ("GET", "/api/events/stream"),
              ("GET", "/api/instances"), ("POST", "/api/try")]
        for method, path in ep:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": "Basic YWRtaW46YWRtaW50b2s="},
                            with_cookie("0" * 64), with_cookie(ADMIN_TOKEN)):
                r = admin(srv, method, path, b"{}" if method == "POST" else None, headers)
                self.assertError(r, 401, None, srv, "%s %s with %r" % (method, path, headers))
        for method, path in ep[1:]:
            body = compact(fixture("messages-upsert-text")) if method == "POST" else None
            if path.endswith("/stream"):
                s = SSE(srv.admin_port, path, BEARER)
                try:
                    self.assertEqual(s.wait_status(), 200)
                finally:
                    s.close()
                continue
            r = admin(srv, method, path, body, BEARER)
            self.assertReply(r, 200, srv, "%s %s with the token" % (method, path))
        r = admin(srv, "GET", "/api/session", None, BEARER)
        self.assertJsonReply(r, 200, {"authenticated": True, "via": "token"}, srv)

    def test_login_cookie_flags_and_use(self):
        srv = self.srv
        r, cookie = login(self, srv)
        self.assertJsonReply(r, 200, None, srv)
        self.assertEqual(r.json()["status"], "ok")
        sc = r.header("set-cookie")
        attrs = [a.strip().lower() for a in sc.split(";")[1:]]
        self.assertIn("httponly", attrs)
        self.assertIn("samesite=strict", attrs)
        self.assertIn("path=/", attrs)
        self.assertIn("max-age=43200", attrs, "12 h by default")
        self.assertNotIn("secure", attrs, "plain HTTP: no Secure")
        # A random server-side id, never the token.
        self.assertRegex(cookie, r"^[0-9a-f]{64}$")
        self.assertNotIn(ADMIN_TOKEN, sc)
        _, cookie2 = login(self, srv)
        self.assertNotEqual(cookie, cookie2, "every login gets a new id")
        self.assertEqual(r.header("cache-control"), "no-store")

        r = admin(srv, "GET", "/api/session", None, with_cookie(cookie))
        body = self.assertJsonReply(r, 200, None, srv)
        self.assertEqual((body["authenticated"], body["via"]), (True, "session"))
        self.assertGreater(body["expires_at"], int(time.time() * 1000) + 11 * 3600 * 1000)
        # The cookie opens the API (among other cookies).
        r = admin(srv, "GET", "/api/events?limit=1", None,
                  {"Cookie": "a=b; %s=%s; c=d" % (COOKIE, cookie)})
        self.assertJsonReply(r, 200, None, srv)
        # A cookie differing in one character does not.
        bad = cookie[:-1] + ("0" if cookie[-1] != "0" else "1")
        self.assertReply(admin(srv, "GET", "/api/events", None, with_cookie(bad)), 401, srv)

    def test_login_inputs(self):
        srv = self.srv
        r, cookie = login(self, srv, "wrong")
        self.assertError(r, 401, "invalid admin token", srv)
        self.assertIsNone(cookie)
        self.assertIsNone(r.header("set-cookie"))
        r = admin(srv, "POST", "/api/login", "token=" + ADMIN_TOKEN,
                  {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertJsonReply(r, 200, None, srv)
        self.assertIsNotNone(cookie_of(r), "a form login works too")
        for body, ctype in ((b"{}", "application/json"), (b"[1]", "application/json"),
                            (b'{"token": 5}', "application/json"), (b"nope", "application/json"),
                            (b"user=x", "application/x-www-form-urlencoded")):
            self.assertError(admin(srv, "POST", "/api/login", body, {"Content-Type": ctype}),
                             401, None, srv, repr(body))
        self.assertError(admin(srv, "POST", "/api/login", b"admintok",
                               {"Content-Type": "text/plain"}), 415, None, srv)
        self.assertError(admin(srv, "POST", "/api/login", b"x" * 5000,
                               {"Content-Type": "application/json"}), 413, None, srv)
        r = admin(srv, "GET", "/api/login")
        self.assertReply(r, 405, srv)
        self.assertEqual(r.header("allow"), "POST")

    def test_logout(self):
        srv = self.srv
        _, cookie = login(self, srv)
        r = admin(srv, "POST", "/api/logout", b"", with_cookie(cookie))
        self.assertJsonReply(r, 200, {"status": "logged out"}, srv)
        self.assertIn("max-age=0", r.header("set-cookie").lower())
        self.assertEqual(cookie_of(r), "")
        self.assertError(admin(srv, "GET", "/api/session", None, with_cookie(cookie)), 401,
                         None, srv)

    def test_cross_site_requests_refused(self):
        srv = self.srv
        _, cookie = login(self, srv)
        body = compact(fixture("messages-upsert-text"))
        r = admin(srv, "POST", "/api/try", body,
                  with_cookie(cookie, {"Origin": "http://evil.example"}))
        self.assertError(r, 403, "cross-site request refused", srv)
        r = admin(srv, "POST", "/api/try", body,
                  with_cookie(cookie, {"Origin": "http://127.0.0.1:%d" % srv.admin_port}))
        self.assertJsonReply(r, 200, None, srv)
        # Reads and bearer-token callers are not subject to the Origin check.
        r = admin(srv, "GET", "/api/events?limit=1", None,
                  with_cookie(cookie, {"Origin": "http://evil.example"}))
        self.assertReply(r, 200, srv)
        h = dict(BEARER, Origin="http://evil.example")
        self.assertReply(admin(srv, "POST", "/api/try", body, h), 200, srv)

    # -- events

    def test_events_listing(self):
        srv = self.srv
        inst = "list-%d" % time.monotonic_ns()
        ids = []
        for i in range(5):
            ids.append(post_event(self, srv, ph.text_body("LIST-%s-%d" % (inst, i),
                                                          instance=inst, phone="3460055500%d" % i)))
        ids.append(post_event(self, srv, compact(dict(fixture("qrcode-updated"), instance=inst))))
        r = admin(srv, "GET", "/api/events?instance=%s&limit=3" % inst, None, BEARER)
        body = self.assertJsonReply(r, 200, None, srv)
        got = [e["id"] for e in body["events"]]
        self.assertEqual(got, ids[::-1][:3], "newest first, limit 3")
        self.assertEqual(body["next_before"], got[-1])
        ev = body["events"][0]
        for k in ("id", "received_at", "instance", "event", "dedup_id", "contact_key", "status",
                  "attempts", "last_error", "script_version", "processed_at", "body"):
            self.assertIn(k, ev)
        self.assertEqual(ev["body"]["event"], "qrcode.updated")
        self.assertEqual(ev["body"].get("apikey"), "[redacted]", "bodies come out redacted")
        r = admin(srv, "GET", "/api/events?instance=%s&limit=3&before=%d" % (inst, got[-1]),
                  None, BEARER)
        body = r.json()
        self.assertEqual([e["id"] for e in body["events"]], ids[::-1][3:6])
        self.assertIsNone(admin(srv, "GET", "/api/events?instance=%s&before=%d" % (inst, ids[0]),
                                None, BEARER).json()["next_before"])
        # Filters: type, contact (a list), instance.
        r = admin(srv, "GET", "/api/events?instance=%s&event=qrcode.updated" % inst, None, BEARER)
        self.assertEqual([e["id"] for e in r.json()["events"]], [ids[5]])
        r = admin(srv, "GET", "/api/events?instance=%s&contact=34600555001,34600555003" % inst,
                  None, BEARER)
        self.assertEqual([e["id"] for e in r.json()["events"]], [ids[3], ids[1]])
        r = admin(srv, "GET", "/api/events?instance=%s&contact=34600555001&contact=34600555002"
                  % inst, None, BEARER)
        self.assertEqual([e["id"] for e in r.json()["events"]], [ids[2], ids[1]])
        self.assertEqual(admin(srv, "GET", "/api/events?instance=nobody-%s" % inst, None,
                               BEARER).json(), {"events": [], "next_before": None})
        for q, msg in (("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"),
                       ("before=-3", "before"), ("status=zombie", "status"), ("order=asc", "unknown"),
                       ("event=%3Cscript%3E", "invalid event"), ("contact=a%20b", "invalid contact")):
            r = admin(srv, "GET", "/api/events?" + q, None, BEARER)
            err = self.assertError(r, 400, None, srv, q)["error"]
            self.assertIn(msg, err, q)
        r = admin(srv, "POST", "/api/events", b"{}", BEARER)
        self.assertReply(r, 405, srv)

    def test_dead_letters_listed_and_retried(self):
        """A failed handler ends dead with its last error; the listing shows it under
        status=dead and the retry (with the dashboard's cookie) puts it back to pending."""
        srv = self.srv
        inst = "dead-%d" % time.monotonic_ns()
        eid = post_event(self, srv, ph.text_body("DEAD-" + inst, text="boom", instance=inst))
        ph.wait_status(srv, [eid], ("dead",))
        r = admin(srv, "GET", "/api/events?status=dead&instance=" + inst, None, BEARER)
        rows = self.assertJsonReply(r, 200, None, srv)["events"]
        self.assertEqual([e["id"] for e in rows], [eid])
        self.assertEqual(rows[0]["status"], "dead")
        self.assertEqual(rows[0]["attempts"], 1)
        self.assertIn("boom: the handler failed on purpose", rows[0]["last_error"])
        r = admin(srv, "GET", "/api/events?status=done&instance=" + inst, None, BEARER)
        self.assertEqual(r.json()["events"], [])
        _, cookie = login(self, srv)
        r = admin(srv, "POST", "/api/events/%d/retry" % eid, b"", with_cookie(cookie))
        self.assertReply(r, 200, srv, "the built-in retry accepts the dashboard session")
        self.assertEqual(r.json()["status"], "pending")
        # It runs again and fails again.
        ph.wait_status(srv, [eid], ("dead",))

    def test_instances_connection_and_qr(self):
        srv = self.srv
        inst = "qr-%d" % time.monotonic_ns()
        qr = fixture("qrcode-updated")
        qr["instance"] = inst
        qr["data"]["qrcode"]["instance"] = inst
        qid = post_event(self, srv, compact(qr))
        conn = fixture("connection-update-connecting")
        conn["instance"] = inst
        cid = post_event(self, srv, compact(conn))
        ph.wait_status(srv, [qid, cid], ("done",))

        def entry():
            r = admin(srv, "GET", "/api/instances", None, BEARER)
            self.assertJsonReply(r, 200, None, srv)
            for e in r.json()["instances"]:
                if e["instance"] == inst and e.get("qr") and e.get("state"):
                    return e
            return None

        e = ph.wait_for(entry, 10, "the instance with its QR and state", srv=srv)
        self.assertEqual(e["state"], "connecting")
        self.assertEqual(e["qr"]["image"], qr["data"]["qrcode"]["base64"])
        self.assertTrue(e["qr"]["image"].startswith("data:image/png;base64,"))
        self.assertEqual(e["qr"]["code"], qr["data"]["qrcode"]["code"])
        self.assertGreaterEqual(e["qr"]["age_ms"], 0)
        self.assertLess(e["qr"]["age_ms"], 60000)
        self.assertIsInstance(e["state_at"], int)
        self.assertReply(admin(srv, "POST", "/api/instances", b"", BEARER), 405, srv)

    # -- playground

    def test_playground_dry_run(self):
        srv = self.srv
        before = srv.query("SELECT (SELECT count(*) FROM events) AS e, "
                           "(SELECT count(*) FROM outbox) AS o, "
                           "(SELECT count(*) FROM contact_state) AS s")[0]
        ev = fixture("messages-upsert-text")
        r = admin(srv, "POST", "/api/try", compact(ev), BEARER)
        out = self.assertJsonReply(r, 200, None, srv)
        self.assertEqual(out["event"], "messages.upsert")
        self.assertEqual(out["contact"], ph.DEFAULT_PHONE)
        self.assertTrue(out["handled"])
        self.assertRegex(out["script_version"], r"^[0-9a-f]{16}$")
        self.assertEqual(out["msg"]["text"], ev["data"]["message"]["conversation"])
        acts = out["outcome"]["actions"]
        self.assertEqual([(a["type"], a["text"]) for a in acts], [("send_text", "hola 0")])
        self.assertEqual(out["outcome"]["state"], {"change": "set", "value": {"n": 1}})
        # With a prior state.
        r = admin(srv, "POST", "/api/try", json.dumps({"event": ev, "state": {"n": 41}}), BEARER)
        out = self.assertJsonReply(r, 200, None, srv)
        self.assertEqual(out["outcome"]["actions"][0]["text"], "hola 41")
        self.assertEqual(out["outcome"]["state"]["value"], {"n": 42})
        # A failing handler: the error, and no outcome.
        boom = json.loads(ph.text_body("TRY-BOOM", text="boom"))
        out = admin(srv, "POST", "/api/try", json.dumps(boom), BEARER).json()
        self.assertIn("boom: the handler failed on purpose", out["error"])
        self.assertNotIn("outcome", out)
        # An event without a handler.
        out = admin(srv, "POST", "/api/try", compact(fixture("presence-update")), BEARER).json()
        self.assertEqual(out["handled"], False)
        # Nothing was stored or queued.
        after = srv.query("SELECT (SELECT count(*) FROM events) AS e, "
                          "(SELECT count(*) FROM outbox) AS o, "
                          "(SELECT count(*) FROM contact_state) AS s")[0]
        self.assertEqual(before, after)

    def test_playground_inputs(self):
        srv = self.srv
        for body, msg in ((b"", "JSON object"), (b"{nope", "JSON object"), (b"[1,2]", "JSON object"),
                          (b'{"data": {}}', "event"),
                          (json.dumps({"event": fixture("messages-upsert-text"), "state": [1]}),
                           "state must be a JSON object")):
            err = self.assertError(admin(srv, "POST", "/api/try", body, BEARER), 400, None, srv,
                                   repr(body[:40]))["error"]
            self.assertIn(msg, err, repr(body[:40]))
        # Over 1 MiB: 413 (from the listener's limit-request-body or the playground's own cap,
        # whichever is lower), before the body is read.
        big = json.dumps({"event": "messages.upsert", "pad": "x" * (1024 * 1024 + 10)}).encode()
        head = harness.request_head("POST", "/api/try", dict(
            BEARER, **{"Content-Type": "application/json", "Content-Length": str(len(big))}))
        r = harness.raw_request(srv.admin_port, head, [big[i:i + 65536]
                                                       for i in range(0, len(big), 65536)])
        self.assertReply(r, 413, srv)
        r = admin(srv, "GET", "/api/try", None, BEARER)
        self.assertReply(r, 405, srv)
        self.assertEqual(r.header("allow"), "POST")

    # -- the event stream

    def test_stream_filters_and_format(self):
        srv = self.srv
        inst = "sse-%d" % time.monotonic_ns()
        every = SSE(srv.admin_port, "/api/events/stream?instance=" + inst, BEARER)
        only = SSE(srv.admin_port, "/api/events/stream?instance=%s&event=messages.upsert"
                   "&contact=34600777001" % inst, BEARER)
        try:
            for s in (every, only):
                self.assertEqual(s.wait_status(), 200)
                self.assertTrue(s.headers["content-type"].startswith("text/event-stream"))
                self.assertEqual(s.headers.get("cache-control"), "no-store")
                s.wait(lambda x: "connected" in x.comments, 5, "the hello comment")
            a = post_event(self, srv, ph.text_body("SSE-A-" + inst, instance=inst,
                                                   phone="34600777001", text="primero"))
            b = post_event(self, srv, ph.text_body("SSE-B-" + inst, instance=inst,
                                                   phone="34600777002"))
            qr = fixture("qrcode-updated")
            qr["instance"] = inst
            c = post_event(self, srv, compact(qr))
            other = post_event(self, srv, ph.text_body("SSE-O-" + inst, instance=inst + "-x",
                                                       phone="34600777001"))
            every.wait_ids([a, b, c])
            only.wait_ids([a])
            d = post_event(self, srv, ph.text_body("SSE-D-" + inst, instance=inst,
                                                   phone="34600777001"))
            only.wait_ids([d])
            every.wait_ids([d])
            self.assertEqual(only.ids(), [a, d])
            self.assertNotIn(other, every.ids())
            self.assertEqual(sorted(every.ids()), sorted([a, b, c, d]))
            m = [e for e in every.events if int(e["id"]) == a][0]["json"]
            self.assertEqual(set(m), {"id", "received_at", "instance", "event", "contact_key",
                                      "body"})
            self.assertEqual((m["id"], m["instance"], m["event"], m["contact_key"]),
                             (a, inst, "messages.upsert", "34600777001"))
            self.assertEqual(m["body"]["data"]["message"]["conversation"], "primero")
            self.assertEqual(m["body"]["apikey"], "[redacted]")
            mq = [e for e in every.events if int(e["id"]) == c][0]["json"]
            self.assertIsNone(mq["contact_key"])
            self.assertEqual(srv.event(a)["received_at"], m["received_at"])
        finally:
            every.close()
            only.close()

    def test_stream_resumes_with_last_event_id(self):
        srv = self.srv
        inst = "resume-%d" % time.monotonic_ns()
        ids = [post_event(self, srv, ph.text_body("RES-%s-%d" % (inst, i), instance=inst))
               for i in range(4)]
        s = SSE(srv.admin_port, "/api/events/stream?instance=" + inst,
                dict(BEARER, **{"Last-Event-ID": str(ids[0])}))
        q = SSE(srv.admin_port, "/api/events/stream?instance=%s&last_event_id=%d"
                % (inst, ids[1]), BEARER)
        try:
            s.wait_ids(ids[1:])
            self.assertEqual(s.ids(), ids[1:], "replayed in order, nothing before the id")
            q.wait_ids(ids[2:])
            self.assertEqual(q.ids(), ids[2:])
            n = post_event(self, srv, ph.text_body("RES-%s-new" % inst, instance=inst))
            s.wait_ids([n])
            q.wait_ids([n])
            self.assertEqual(s.ids(), ids[1:] + [n], "live after the replay, no duplicates")
        finally:
            s.close()
            q.close()
        for bad in ("abc", "-1", "1" * 30):
            b = SSE(srv.admin_port, "/api/events/stream", dict(BEARER, **{"Last-Event-ID": bad}))
            try:
                self.assertEqual(b.wait_status(), 400, bad)
            finally:
                b.close()
        for q in ("event=bad%20name", "limit=3", "status=dead", "x=1"):
            b = SSE(srv.admin_port, "/api/events/stream?" + q, BEARER)
            try:
                self.assertEqual(b.wait_status(), 400, q)
            finally:
                b.close()

    def test_stream_heartbeat(self):
        """wahook.dashboard.sse-heartbeat (300 ms here) sends a comment line to idle streams."""
        s = SSE(self.srv.admin_port, "/api/events/stream?instance=idle-nobody", BEARER)
        try:
            s.wait(lambda x: x.comments.count("heartbeat") >= 3, 10, "three heartbeats")
            self.assertEqual(s.events, [])
        finally:
            s.close()


class DashboardSettings(harness.WahookTestCase):
    """Behaviour that needs a server of its own settings."""

    def test_login_rate_limited(self):
        srv = dash_server(self, BASE + "wahook.dashboard.login-rate-per-minute: 3\n")
        codes = [login(self, srv, "wrong-%d" % i)[0].status for i in range(3)]
        self.assertEqual(codes, [401, 401, 401])
        r, cookie = login(self, srv)
        self.assertError(r, 429, "too many login attempts", srv)
        self.assertIsNone(cookie, "even the right token is refused while limited")
        self.assertRetryAfter(r, 1)
        # The API with the token itself is not affected.
        self.assertReply(admin(srv, "GET", "/api/events?limit=1", None, BEARER), 200, srv)

    def test_no_admin_token_no_login(self):
        """Without WAHOOK_ADMIN_TOKEN the admin API and the dashboard login are closed."""
        conf = ph.script_conf(TOP).replace("  token: admintok\n", "")
        self.assertNotIn("token: admintok", conf)
        srv = self.new_server(conf, start=False)
        ph.install_scripts(srv, MAIN_LUA)
        srv.start()
        msg = "the admin API is disabled: set WAHOOK_ADMIN_TOKEN"
        for token in ("", "admintok", "anything"):
            r, cookie = login(self, srv, token)
            self.assertError(r, 401, msg, srv)
            self.assertIsNone(cookie)
        self.assertError(admin(srv, "GET", "/api/events", None, {"Authorization": "Bearer "}),
                         401, msg, srv)
        self.assertError(admin(srv, "GET", "/api/session"), 401, msg, srv)
        # The page itself still loads (it shows the login form).
        self.assertReply(admin(srv, "GET", "/dashboard/"), 200, srv)

    def test_session_expires(self):
        srv = dash_server(self, TOP + "wahook.dashboard.session-ttl: 2s\n")
        r, cookie = login(self, srv)
        self.assertIn("max-age=2", r.header("set-cookie").lower())
        self.assertReply(admin(srv, "GET", "/api/session", None, with_cookie(cookie)), 200, srv)
        ph.wait_for(lambda: admin(srv, "GET", "/api/session", None,
                                  with_cookie(cookie)).status == 401 or None, 6,
                    "the session to expire", interval=0.2, srv=srv)
        self.assertReply(admin(srv, "GET", "/api/events", None, with_cookie(cookie)), 401, srv)

    def test_secure_cookie(self):
        srv = dash_server(self, TOP + "wahook.dashboard.secure-cookie: ON\n")
        r, _ = login(self, srv)
        attrs = [a.strip().lower() for a in r.header("set-cookie").split(";")]
        self.assertIn("secure", attrs)

    def test_stream_client_cap(self):
        srv = dash_server(self, TOP + "wahook.dashboard.sse-max-clients: 2\n")
        a = SSE(srv.admin_port, "/api/events/stream", BEARER)
        b = SSE(srv.admin_port, "/api/events/stream", BEARER)
        try:
            self.assertEqual((a.wait_status(), b.wait_status()), (200, 200))
            c = SSE(srv.admin_port, "/api/events/stream", BEARER)
            self.assertEqual(c.wait_status(), 503)
            c.wait(lambda x: x.ended, 5, "the 503 body")
            self.assertIn(b"too many event streams", c.body)
            self.assertTrue(c.headers.get("retry-after"))
            c.close()
            a.close()

            # The slot frees once the server notices (at the latest at the next heartbeat).
            def try_again():
                d = SSE(srv.admin_port, "/api/events/stream", BEARER)
                try:
                    return d.wait_status() == 200 or None
                finally:
                    d.close()

            ph.wait_for(try_again, 10, "a free slot", interval=0.3, srv=srv)
        finally:
            a.close()
            b.close()

    def test_slow_stream_cut_off(self):
        """A client that does not read is disconnected once its buffer (16 KiB here) is full;
        a reading client gets everything and the server keeps serving."""
        srv = dash_server(self, TOP + "wahook.dashboard.sse-buffer: 16K\n")
        slow = SSE(srv.admin_port, "/api/events/stream", BEARER, rcvbuf=4096)
        fast = SSE(srv.admin_port, "/api/events/stream", BEARER)
        try:
            self.assertEqual(slow.wait_status(), 200)
            self.assertEqual(fast.wait_status(), 200)
            ids = []
            # 8 KiB bodies: the socket buffers fill first, then 16 KiB more cut the client off.
            for i in range(600):
                ids.append(post_event(self, srv, harness.upsert("SLOW-%d" % i, pad=8000)))
                fast.pump(0)
                if i % 20 == 19 and "event stream cut off" in srv.stderr():
                    break
            fast.wait_ids(ids, 20)
            self.assertFalse(fast.eof)
            # Drain the slow client now: its stream stops short of the end and the connection
            # is closed (without the final chunk).
            slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            slow.wait(lambda x: x.eof, 20, "the cut-off connection to close")
            self.assertFalse(slow.ended, "cut off, not ended cleanly")
            self.assertLess(len(slow.ids()), len(ids))
            self.assertIn("event stream cut off", srv.stderr())
            n = post_event(self, srv, ph.text_body("SLOW-after"))
            fast.wait_ids([n])
        finally:
            slow.close()
            fast.close()

    def test_default_heartbeat_is_15s(self):
        srv = dash_server(self, top="wahook.processing.max-attempts: 1\n")
        s = SSE(srv.admin_port, "/api/events/stream", BEARER)
        try:
            self.assertEqual(s.wait_status(), 200)
            t0 = time.monotonic()
            s.wait(lambda x: "heartbeat" in x.comments, 20, "the first heartbeat")
            waited = time.monotonic() - t0
            self.assertGreater(waited, 5, "not the test setting: %.1f s" % waited)
            self.assertLessEqual(waited, 16.5, "every 15 s: %.1f s" % waited)
        finally:
            s.close()

    def test_streams_closed_on_shutdown(self):
        srv = dash_server(self)
        streams = [SSE(srv.admin_port, "/api/events/stream", BEARER) for _ in range(3)]
        try:
            for s in streams:
                self.assertEqual(s.wait_status(), 200)
            # SIGTERM once the server waits for it (its start-up is then complete).
            ph.wait_for(lambda: '"msg":"started"' in srv.stderr() or None, 10,
                        "the server's started line", srv=srv)
            srv.terminate()
            for s in streams:
                s.wait(lambda x: x.ended, 5, "the stream to end with the server")
                s.wait(lambda x: x.eof, 5, "the connection to close")
            self.assertEqual(srv.proc.wait(15), 0)
        finally:
            for s in streams:
                s.close()

    def test_dry_runs_limited_and_off_the_loop(self):
        """Dry runs run on workers with the script deadline: two spinning runs at once fill the
        playground, a third is refused, and webhooks keep being answered meanwhile."""
        srv = dash_server(self, "wahook.processing.max-attempts: 1\nwahook.scripts.timeout: 2s\n")
        spin = json.dumps(json.loads(ph.text_body("TRY-SPIN", text="spin")))
        results = []

        def run():
            results.append(admin(srv, "POST", "/api/try", spin, BEARER, timeout=30))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        third = admin(srv, "POST", "/api/try", spin, BEARER)
        eid = post_event(self, srv, ph.text_body("WHILE-SPINNING"))
        self.assertEqual(results, [], "the webhook was answered while both dry runs spun")
        for t in threads:
            t.join(30)
        self.assertError(third, 429, "too many dry runs at once", srv)
        self.assertEqual(len(results), 2)
        for r in results:
            out = self.assertJsonReply(r, 200, None, srv)
            self.assertIn("timed out", out["error"])
        self.assertGreater(eid, 0)


class PostmanCollection(harness.WahookTestCase):
    """The manual testing kit: one request per fixture, signed by the collection's pre-request
    script (run here under node with stand-ins for pm and CryptoJS) so that a real server with
    the hmac method accepts every one, and the admin API requests."""

    PATH = os.path.join(harness.SOURCE_DIR, "tests", "postman", "wahook.postman_collection.json")
    SIGNER = os.path.join(harness.SOURCE_DIR, "tests", "integration", "e2e", "postman_sign.js")
    SECRET = "pm-secret-7c1e"

    def load(self):
        with open(self.PATH, encoding="utf-8") as f:
            return json.load(f)

    def test_one_request_per_fixture(self):
        coll = self.load()
        self.assertEqual(coll["info"]["schema"],
                         "https://schema.getpostman.com/json/collection/v2.1.0/collection.json")
        hooks, adm = coll["item"]
        fixtures = sorted(n[:-5] for n in os.listdir(harness.EVOLUTION_DIR) if n.endswith(".json"))
        self.assertEqual(sorted(i["name"].split(" ")[0] for i in hooks["item"]), fixtures)
        for item in hooks["item"]:
            name = item["name"].split(" ")[0]
            self.assertEqual(json.loads(item["request"]["body"]["raw"]), fixture(name), name)
            self.assertEqual(item["request"]["url"]["raw"], "{{baseUrl}}{{webhookPath}}")
        pre = [e for e in hooks["event"] if e["listen"] == "prerequest"]
        self.assertEqual(len(pre), 1)
        self.assertIn("webhookSecret", "\n".join(pre[0]["script"]["exec"]))
        keys = {v["key"] for v in coll["variable"]}
        self.assertLessEqual({"baseUrl", "webhookSecret", "adminUrl", "adminToken"}, keys)
        # The admin folder carries the bearer token and covers the admin API.
        self.assertEqual(adm["auth"]["type"], "bearer")
        routes = {(i["request"]["method"], "/" + "/".join(i["request"]["url"]["path"]))
                  for i in adm["item"]}
        for want in (("POST", "/api/login"), ("POST", "/api/logout"), ("GET", "/api/session"),
                     ("GET", "/api/events"), ("GET", "/api/events/stream"),
                     ("POST", "/api/events/{{lastEventId}}/retry"), ("GET", "/api/instances"),
                     ("POST", "/api/try"), ("GET", "/api/stats"), ("GET", "/api/outbox"),
                     ("POST", "/api/outbox/{{outboxId}}/retry"),
                     ("POST", "/api/outbox/{{outboxId}}/drop"), ("POST", "/api/reload"),
                     ("GET", "/readyz"), ("GET", "/metrics")):
            self.assertIn(want, routes)

    def test_signatures_accepted_by_the_server(self):
        self.assertIsNotNone(shutil.which("node"), "node is needed: apt-get install -y nodejs")
        route = """
auth:
  hmac: {secrets: [%s]}
rate-limit: {ip-per-minute: 100000, instance-per-minute: 100000, instance-burst: 100000}
""" % self.SECRET
        srv = self.new_server(harness.make_conf(route))

        def signed(secret):
            p = subprocess.run(["node", self.SIGNER, self.PATH, secret, "true"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr.decode("utf-8", "replace"))
            return [json.loads(line) for line in p.stdout.decode("utf-8").splitlines()]

        reqs = signed(self.SECRET)
        self.assertEqual(len(reqs), len([n for n in os.listdir(harness.EVOLUTION_DIR)
                                         if n.endswith(".json")]))
        for r in reqs:
            self.assertRegex(r["signature"], r"^sha256=[0-9a-f]{64}$")
            resp = srv.post(r["body"].encode("utf-8"), {"X-Webhook-Signature": r["signature"]},
                            path=r["path"])
            body = self.assertJsonReply(resp, 200, None, srv, r["name"])
            self.assertIn(body["status"], ("accepted", "duplicate"), r["name"])
        # Sent again, messages get fresh ids (uniqueIds): stored again, not duplicates.
        again = [r for r in signed(self.SECRET) if "messages-upsert-text" in r["name"]][0]
        resp = srv.post(again["body"].encode("utf-8"), {"X-Webhook-Signature": again["signature"]})
        self.assertEqual(self.assertJsonReply(resp, 200, None, srv)["status"], "accepted")
        # A wrong secret in the collection is refused.
        bad = signed("not-the-secret")[0]
        resp = srv.post(bad["body"].encode("utf-8"), {"X-Webhook-Signature": bad["signature"]})
        self.assertError(resp, 401, "invalid signature", srv)


if __name__ == "__main__":
    harness.main()
