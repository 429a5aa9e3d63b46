"""Integration harness: starts the real wahook binary on loopback with a config written inline by
each test, and offers helpers to sign bodies, mint JWTs, post raw bytes and read the SQLite store.

Python 3 standard library only. Every wait is bounded in count and in time.

Environment (set by the ctest registration; defaults for running a file by hand):
  WAHOOK_BIN       path of the binary (default /work/main/build/wahook)
  WH_FIXTURES_DIR  shared fixtures (default <repo>/../shared/fixtures)
  WH_SOURCE_DIR    repository root
  WH_KEEP_TMP=1    keep the temporary directories of the servers for inspection

Config placeholders replaced by Server before writing the file:
  @PORT@ @PORT2@ @ADMIN_PORT@   free loopback ports picked for this server
  @DATA_DIR@                    <tmp>/data
  @TMP@                         the server's temporary directory
  @SCRIPTS_DIR@                 the repository's scripts/ (the default of make_conf)
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("WH_SOURCE_DIR") or os.path.abspath(os.path.join(HERE, "..", ".."))
WAHOOK_BIN = os.environ.get("WAHOOK_BIN") or "/work/main/build/wahook"
FIXTURES_DIR = os.environ.get("WH_FIXTURES_DIR") or os.path.abspath(
    os.path.join(SOURCE_DIR, "..", "shared", "fixtures"))
EVOLUTION_DIR = os.path.join(FIXTURES_DIR, "evolution")

WEBHOOK_PATH = "/api/whatsapp/webhook"
FIXTURE_APIKEY = "B1E2C3D4-A5F6-4789-9ABC-DEF012345678"  # the apikey every fixture carries
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 30.0


# ---------------------------------------------------------------------------------------------
# small helpers: ports, fixtures, bodies, signatures, JWTs


def free_port():
    """A loopback port that was free a moment ago (bind port 0, read it, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def fixture(name):
    """A fixture from fixtures/evolution as a dict (name with or without .json)."""
    if not name.endswith(".json"):
        name += ".json"
    with open(os.path.join(EVOLUTION_DIR, name), "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def compact(obj):
    """The wire form Evolution sends: compact JSON, UTF-8, non-ASCII raw."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def upsert(msg_id, instance="acme-bot", text=None, pad=0, apikey=FIXTURE_APIKEY):
    """A messages.upsert body (the text fixture) with its own key.id; pad adds that many bytes of
    text to the conversation so that bodies of a chosen size can be built."""
    obj = fixture("messages-upsert-text")
    obj["instance"] = instance
    obj["data"]["key"]["id"] = msg_id
    if text is not None:
        obj["data"]["message"]["conversation"] = text
    if pad:
        # incompressible-looking but deterministic padding, distinct per message id
        seed = hashlib.sha256(msg_id.encode()).hexdigest()
        reps = pad // len(seed) + 1
        obj["data"]["message"]["conversation"] += " " + (seed * reps)[:pad]
    if apikey is None:
        obj.pop("apikey", None)
    else:
        obj["apikey"] = apikey
    return compact(obj)


def sign(secret, body, prefix="sha256="):
    """HMAC-SHA256 hex of the raw body, as wahook's hmac method expects."""
    if isinstance(secret, str):
        secret = secret.encode()
    return prefix + hmac.new(secret, body, hashlib.sha256).hexdigest()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(secret, iat=None, exp=None, app="evolution", action="webhook", alg="HS256",
             extra=None):
    """An HS256 JWT shaped like Evolution's jwt_key token (exp = iat + 600 by default)."""
    now = int(time.time())
    if iat is None:
        iat = now
    if exp is None:
        exp = iat + 600
    header = {"alg": alg, "typ": "JWT"}
    payload = {"iat": iat, "exp": exp}
    if app is not None:
        payload["app"] = app
    if action is not None:
        payload["action"] = action
    if extra:
        payload.update(extra)
    signing_input = (b64url(compact(header)) + "." + b64url(compact(payload))).encode("ascii")
    if isinstance(secret, str):
        secret = secret.encode()
    sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return signing_input.decode("ascii") + "." + b64url(sig)


def indent(text, n):
    pad = " " * n
    return "\n".join((pad + line) if line.strip() else line for line in text.strip("\n").split("\n"))


def make_conf(route, top="", path=WEBHOOK_PATH, env_mode="production", limit="1M", threads=2,
              sync="normal", listen=None, scripts="@SCRIPTS_DIR@"):
    """A full config: the usual prelude (one loopback listener, data dir, admin listener) plus the
    wahook.webhook mapping given by the test in `route` (YAML, any indentation), and `top` for
    extra top-level directives. Placeholders are filled in by Server."""
    if listen is None:
        listen = "listen:\n  port: @PORT@\n  host: 127.0.0.1\n"
    env_line = "wahook.env: %s\n" % env_mode if env_mode else ""
    text = (listen +
            "num-threads: %d\n" % threads +
            "limit-request-body: %s\n" % limit +
            env_line +
            "wahook.data-dir: @DATA_DIR@\n"
            "wahook.scripts.dir: %s\n" % scripts +
            "wahook.store.synchronous: %s\n" % sync +
            "wahook.admin:\n  host: 127.0.0.1\n  port: @ADMIN_PORT@\n  token: admintok\n")
    if top:
        text += top.strip("\n") + "\n"
    text += ("hosts:\n  default:\n    paths:\n      %s:\n        wahook.webhook:\n" % path +
             indent(route, 10) + "\n")
    return text


# ---------------------------------------------------------------------------------------------
# HTTP


class Resp:
    """A response: status, headers (lower-case names), raw body, and json()."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 - the message is what matters in a failed test
            raise AssertionError("reply is not JSON (%s): status %d body %r" %
                                 (e, self.status, self.body[:300]))

    def __repr__(self):
        return "<%d %r %r>" % (self.status, self.headers.get("content-type"), self.body[:200])


def _resp_from(r):
    headers = {}
    for k, v in r.getheaders():
        k = k.lower()
        headers[k] = (headers[k] + ", " + v) if k in headers else v
    return Resp(r.status, headers, r.read())


def request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT, conn=None):
    """One request. A fresh connection unless conn (an http.client.HTTPConnection) is given."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        return _resp_from(conn.getresponse())
    finally:
        if own:
            conn.close()


def raw_request(port, head, body_parts=(), timeout=HTTP_TIMEOUT, settle=0.3):
    """Sends a hand-built request (head: bytes up to and including the blank line) and then the
    body parts one by one, stopping early if the server has already answered (a 413 arrives
    before the body is read). Returns the parsed Resp. Used where http.client would hide what is
    on the wire or would fail writing a body the server refused."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head)
        answered = False
        r, _, _ = select.select([s], [], [], settle)
        answered = bool(r)
        for part in body_parts:
            if answered:
                break
            try:
                s.sendall(part)
            except OSError:
                break  # the server closed: read what it said
            r, _, _ = select.select([s], [], [], 0)
            answered = bool(r)
        resp = http.client.HTTPResponse(s, method="POST")
        resp.begin()
        return _resp_from(resp)
    finally:
        s.close()


def chunked_parts(body, size):
    """Chunked transfer coding of body in pieces of `size` bytes, as separate writes."""
    parts = []
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        parts.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    parts.append(b"0\r\n\r\n")
    return parts


def request_head(method, path, headers):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"]
    lines += ["%s: %s" % (k, v) for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------------------------------------
# the server


def base_env(extra=None):
    """A controlled environment: nothing of the caller's WEBHOOK_SECRET / WAHOOK_ENV leaks in."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    for k in ("LSAN_OPTIONS", "ASAN_OPTIONS", "UBSAN_OPTIONS", "TZ"):
        if k in os.environ:
            env[k] = os.environ[k]
    if extra:
        env.update(extra)
    return env


def run_wahook(args, env=None, cwd=None, input=None, timeout=20):
    """Runs the binary once (a CLI command) and returns the CompletedProcess (bytes)."""
    return subprocess.run([WAHOOK_BIN] + list(args), env=base_env(env), cwd=cwd, input=input,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


class ServerError(AssertionError):
    pass


class Server:
    """One wahook process with its own temporary directory, config, .env file and data dir."""

    def __init__(self, conf, env=None, env_file="", name="wahook"):
        self.tmp = tempfile.mkdtemp(prefix="wahook-it-%s-" % name)
        self.data_dir = os.path.join(self.tmp, "data")
        self.port = free_port()
        self.port2 = free_port()
        self.admin_port = free_port()
        self.conf_text = (conf.replace("@PORT@", str(self.port))
                          .replace("@PORT2@", str(self.port2))
                          .replace("@ADMIN_PORT@", str(self.admin_port))
                          .replace("@DATA_DIR@", self.data_dir)
                          .replace("@TMP@", self.tmp)
                          .replace("@SCRIPTS_DIR@", os.path.join(SOURCE_DIR, "scripts")))
        self.conf_path = os.path.join(self.tmp, "wahook.conf")
        with open(self.conf_path, "w") as f:
            f.write(self.conf_text)
        self.env_path = os.path.join(self.tmp, ".env")
        with open(self.env_path, "w") as f:
            f.write(env_file)
        self.env = dict(env or {})
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self.proc = None
        self.starts = 0
        self.last_rc = None
        self.ready = False  # became ready and was not since stopped or killed on purpose
        self._stderr_cache = ""

    # -- lifecycle

    def spawn(self):
        """Starts the process without waiting for it to be ready."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        err = open(self.stderr_path, "ab")
        out = open(os.path.join(self.tmp, "stdout.log"), "ab")
        try:
            self.proc = subprocess.Popen(
                [WAHOOK_BIN, "serve", "-c", self.conf_path, "--env-file", self.env_path],
                env=base_env(self.env), cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err, start_new_session=True)
        finally:
            err.close()
            out.close()
        return self.proc

    def start(self, ports=None, timeout=READY_TIMEOUT):
        """Starts and waits until GET /healthz answers 200 on every port in ports (default: the
        first listener). Raises ServerError with the stderr tail when it does not."""
        self.spawn()
        self.wait_ready(ports or [self.port], timeout)
        return self

    def wait_ready(self, ports, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        pending = list(ports)
        last = None
        for _ in range(int(timeout / 0.05) + 10):
            if not pending or time.monotonic() > deadline:
                break
            rc = self.proc.poll()
            if rc is not None:
                raise ServerError("wahook serve exited with %d before it was ready\n%s" %
                                  (rc, self.tail()))
            try:
                r = request(pending[0], "GET", "/healthz", timeout=2)
                last = r
                if r.status == 200:
                    pending.pop(0)
                    continue
            except OSError as e:
                last = e
            time.sleep(0.05)
        if not pending:
            self.ready = True
            return
        self.kill()
        raise ServerError("wahook was not ready on ports %s within %.0f s (last: %r)\n%s" %
                          (pending, timeout, last, self.tail()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait. Returns the exit code; raises ServerError (after SIGKILL) if the
        process does not exit within timeout."""
        if self.proc is None:
            return None
        self.check_alive()
        self.ready = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.last_rc = self.proc.returncode
                raise ServerError("wahook did not exit within %.0f s of SIGTERM\n%s" %
                                  (timeout, self.tail()))
        self.last_rc = self.proc.returncode
        return self.last_rc

    def terminate(self):
        """Sends SIGTERM without waiting (the caller waits on self.proc)."""
        self.ready = False
        self.proc.send_signal(signal.SIGTERM)

    def check_alive(self):
        """Raises if the server died on its own after it was ready (a crash)."""
        if self.ready and self.proc is not None and self.proc.poll() is not None:
            self.ready = False
            self.last_rc = self.proc.returncode
            raise ServerError("wahook died on its own with status %d (negative: signal)\n%s" %
                              (self.proc.returncode, self.tail()))

    def kill(self):
        """SIGKILL (a crash), and reap."""
        self.ready = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None:
            self.last_rc = self.proc.returncode

    def cleanup(self):
        """Stops if still running (asserting a clean exit 0) and removes the temporary dir."""
        try:
            self.check_alive()
            if self.running():
                rc = self.stop()
                if rc != 0:
                    raise ServerError("wahook exited with %r on SIGTERM (expected 0)\n%s" %
                                      (rc, self.tail()))
        finally:
            self._stderr_cache = self.stderr()
            if not os.environ.get("WH_KEEP_TMP"):
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- logs

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return self._stderr_cache

    def tail(self, n=40):
        lines = self.stderr().splitlines()
        return "---- wahook stderr (last %d of %d lines, %s) ----\n%s\n----" % (
            min(n, len(lines)), len(lines), self.conf_path, "\n".join(lines[-n:]))

    # -- HTTP

    def request(self, method, path, body=None, headers=None, port=None, **kw):
        return request(port or self.port, method, path, body, headers, **kw)

    def get(self, path, headers=None, port=None, **kw):
        return self.request("GET", path, None, headers, port, **kw)

    def post(self, body, headers=None, path=WEBHOOK_PATH, content_type="application/json",
             port=None, **kw):
        """POSTs raw bytes; content_type None sends no Content-Type at all."""
        h = {}
        if content_type is not None:
            h["Content-Type"] = content_type
        h.update(headers or {})
        return self.request("POST", path, body, h, port, **kw)

    # -- store

    @property
    def db_path(self):
        return os.path.join(self.data_dir, "wahook.db")

    def db(self):
        """A read-only connection to the store (rows as sqlite3.Row)."""
        if not os.path.exists(self.db_path):
            raise AssertionError("no database at %s\n%s" % (self.db_path, self.tail()))
        c = sqlite3.connect("file:%s?mode=ro" % self.db_path, uri=True, timeout=10)
        c.row_factory = sqlite3.Row
        return c

    def query(self, sql, args=()):
        c = self.db()
        try:
            return [dict(r) for r in c.execute(sql, args).fetchall()]
        finally:
            c.close()

    def event(self, event_id):
        rows = self.query("SELECT * FROM events WHERE id = ?", (event_id,))
        return rows[0] if rows else None

    def events(self):
        return self.query("SELECT * FROM events ORDER BY id")

    # -- CLI against this server's config and env file

    def cli(self, words, rest=(), input=None, timeout=20):
        return run_wahook(list(words) + ["-c", self.conf_path, "--env-file", self.env_path] +
                          list(rest), env=self.env, cwd=self.tmp, input=input, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# unittest base class


class WahookTestCase(unittest.TestCase):
    """Base class: tracks servers, stops them after each test (asserting exit 0), and prints their
    stderr tails when a test fails."""

    class_servers = None

    def _servers(self):
        if "_test_servers" not in self.__dict__:
            self._test_servers = []
        return self._test_servers

    @classmethod
    def start_class_server(cls, conf, **kw):
        if cls.class_servers is None:
            cls.class_servers = []
        s = Server(conf, name=cls.__name__, **kw)
        cls.class_servers.append(s)
        try:
            s.start()
        except Exception:
            s.cleanup()
            raise
        return s

    @classmethod
    def tearDownClass(cls):
        servers, cls.class_servers = cls.class_servers or [], None
        errors = []
        for s in servers:
            try:
                s.cleanup()
            except ServerError as e:
                errors.append(str(e))
        if errors:
            raise ServerError("\n".join(errors))

    def tearDown(self):
        # a shared server that crashed during this test is reported against this test
        for s in type(self).class_servers or []:
            s.check_alive()

    def new_server(self, conf, start=True, ports=None, **kw):
        """A server for this test only; stopped (asserting exit 0) when the test ends."""
        s = Server(conf, name=self._testMethodName, **kw)
        self._servers().append(s)
        self.addCleanup(s.cleanup)
        if start:
            s.start(ports=ports)
        return s

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            for s in self._servers() + list(type(self).class_servers or []):
                sys.stderr.write("\n%s: %s\n" % (self.id(), s.tail()))
        return out

    # -- assertions with context

    def assertReply(self, resp, status, srv=None, msg=""):
        if resp.status != status:
            self.fail("%sexpected HTTP %d, got %r%s" % (
                (msg + ": ") if msg else "", status, resp, ("\n" + srv.tail(15)) if srv else ""))

    def assertJsonReply(self, resp, status, expect=None, srv=None, msg=""):
        """Status, Content-Type application/json, and (when given) the exact JSON body."""
        self.assertReply(resp, status, srv, msg)
        ctype = (resp.header("content-type") or "").split(";")[0].strip().lower()
        self.assertEqual(ctype, "application/json",
                         "%s: HTTP %d must have Content-Type application/json, got %r" %
                         (msg or "reply", status, resp.header("content-type")))
        body = resp.json()
        if expect is not None:
            self.assertEqual(body, expect, "%s: body of HTTP %d" % (msg or "reply", status))
        return body

    def assertError(self, resp, status, message=None, srv=None, msg=""):
        """{"error": message} (any non-empty string when message is None)."""
        body = self.assertJsonReply(resp, status, None, srv, msg)
        self.assertIsInstance(body, dict, "%s: error body must be an object" % msg)
        self.assertIn("error", body, "%s: error body must have an \"error\" field: %r" % (msg, body))
        self.assertIsInstance(body["error"], str)
        self.assertTrue(body["error"], "%s: error message must not be empty" % msg)
        if message is not None:
            self.assertEqual(body["error"], message, "%s: error message" % msg)
        return body

    def assertAccepted(self, resp, srv=None, msg=""):
        """200 {"status":"accepted","id":N}; returns N."""
        body = self.assertJsonReply(resp, 200, None, srv, msg)
        self.assertEqual(body.get("status"), "accepted", "%s: %r" % (msg or "reply", body))
        self.assertIsInstance(body.get("id"), int, "%s: id must be an integer: %r" % (msg, body))
        self.assertEqual(set(body), {"status", "id"}, "%s: exactly status and id" % msg)
        return body["id"]

    def assertDuplicate(self, resp, srv=None, msg=""):
        body = self.assertJsonReply(resp, 200, None, srv, msg)
        self.assertEqual(body.get("status"), "duplicate", "%s: %r" % (msg or "reply", body))
        self.assertIsInstance(body.get("id"), int)
        return body["id"]

    def assertRetryAfter(self, resp, minimum=1):
        ra = resp.header("retry-after")
        self.assertIsNotNone(ra, "HTTP %d must carry Retry-After: %r" % (resp.status, resp.headers))
        self.assertTrue(ra.strip().isdigit(), "Retry-After must be delay-seconds, got %r" % ra)
        self.assertGreaterEqual(int(ra), minimum, "Retry-After")
        return int(ra)


def binary_missing_reason():
    if not os.path.isfile(WAHOOK_BIN) or not os.access(WAHOOK_BIN, os.X_OK):
        return "wahook binary not found at %s (set WAHOOK_BIN)" % WAHOOK_BIN
    return None


def main():
    """unittest.main for a suite file: verbosity 2, non-zero exit on failure. A missing binary is
    a failure, not a skip: ctest must not report green without having run anything."""
    reason = binary_missing_reason()
    if reason:
        sys.stderr.write("FATAL: %s\n" % reason)
        sys.exit(2)
    unittest.main(verbosity=2)
