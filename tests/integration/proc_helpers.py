"""Shared helpers for the processing suites (test_processing*.py, test_reload.py, test_timers.py,
test_scripts_cli.py): a server whose scripts directory lives in its own temporary directory
(lib/normalize.lua copied from the repository, main.lua written by the test), bodies with a
chosen contact, and bounded polling of the store.

Python 3 standard library only; every wait has a deadline."""

import http.client
import json
import os
import shutil
import threading
import time

import harness
from harness import SOURCE_DIR, WEBHOOK_PATH, compact, fixture, make_conf

TOKEN = "proc-tok-5e2d"
ROUTE = """
auth:
  token: {secrets: [%s]}
rate-limit: {ip-per-minute: 100000, instance-per-minute: 6000000, instance-burst: 1000000}
""" % TOKEN
HEADERS = {"x-webhook-token": TOKEN, "Content-Type": "application/json"}

NORMALIZE_LUA = os.path.join(SOURCE_DIR, "scripts", "lib", "normalize.lua")
DEFAULT_PHONE = "34600111222"
DEFAULT_LID = "207581245931618"
TERMINAL = ("done", "dead")


# ---------------------------------------------------------------------------------------------
# scripts on disk


def scripts_dir(srv):
    return os.path.join(srv.tmp, "scripts")


def write_atomic(path, text):
    """Writes text to path the way editors save: a temporary file renamed over the old one."""
    tmp = path + ".tmp-%d" % os.getpid()
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def install_scripts(srv, main_lua, extra=None):
    """Creates <tmp>/scripts with lib/normalize.lua (the repository's) and main.lua; extra maps
    relative paths to file contents."""
    d = scripts_dir(srv)
    os.makedirs(os.path.join(d, "lib"), exist_ok=True)
    shutil.copyfile(NORMALIZE_LUA, os.path.join(d, "lib", "normalize.lua"))
    with open(os.path.join(d, "main.lua"), "w", encoding="utf-8") as f:
        f.write(main_lua)
    for rel, text in (extra or {}).items():
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)


def write_main(srv, main_lua):
    write_atomic(os.path.join(scripts_dir(srv), "main.lua"), main_lua)


def script_conf(top="", threads=2):
    return make_conf(ROUTE, top=top, threads=threads, scripts="@TMP@/scripts")


def script_server(tc, main_lua, top="", start=True, extra=None, threads=2):
    """A server for test case tc (a WahookTestCase) running main_lua; stopped after the test."""
    srv = tc.new_server(script_conf(top, threads), start=False)
    install_scripts(srv, main_lua, extra)
    if start:
        srv.start()
    return srv


def handlers(body):
    """main.lua around handler definitions written against `h` and `wahook`."""
    return 'local wahook = require "wahook"\nlocal h = {}\n' + body.strip("\n") + "\nreturn h\n"


# ---------------------------------------------------------------------------------------------
# bodies and posting


def text_body(mid, text="hola", phone=DEFAULT_PHONE, lid=DEFAULT_LID, instance="acme-bot",
              push_name=None):
    """A messages.upsert text from contact phone (LID alias lid) with its own key.id."""
    obj = fixture("messages-upsert-text")
    obj["instance"] = instance
    key = obj["data"]["key"]
    key["id"] = mid
    key["remoteJid"] = "%s@s.whatsapp.net" % phone
    if lid is None:
        key.pop("remoteJidAlt", None)
    else:
        key["remoteJidAlt"] = "%s@lid" % lid
    obj["data"]["message"]["conversation"] = text
    if push_name is not None:
        obj["data"]["pushName"] = push_name
    return compact(obj)


def fixture_body(name, **data_updates):
    obj = fixture(name)
    obj["data"].update(data_updates)
    return compact(obj)


def post(tc, srv, body, msg=""):
    """POSTs body with the token and asserts it was accepted; returns the event id."""
    return tc.assertAccepted(srv.post(body, {"x-webhook-token": TOKEN}), srv, msg)


def post_raw(srv, body):
    return srv.post(body, {"x-webhook-token": TOKEN})


# ---------------------------------------------------------------------------------------------
# polling the store


def wait_for(fn, timeout, what, interval=0.05, srv=None):
    """Calls fn until it returns a truthy value or timeout seconds passed; returns the value or
    raises AssertionError naming what was awaited (with the last value and the server log)."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / interval) + 100):
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            break
        if srv is not None:
            srv.check_alive()
        time.sleep(interval)
    raise AssertionError("timed out after %.1f s waiting for %s (last: %r)%s" % (
        timeout, what, last, ("\n" + srv.tail(30)) if srv is not None else ""))


def statuses(srv, ids):
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = srv.query("SELECT id, status FROM events WHERE id IN (%s)" % marks, list(ids))
    return {r["id"]: r["status"] for r in rows}


def wait_status(srv, ids, want=TERMINAL, timeout=15, what=None):
    """Waits until every event of ids has a status in want; returns {id: row}."""
    ids = list(ids)

    def check():
        st = statuses(srv, ids)
        left = [i for i in ids if st.get(i) not in want]
        return True if not left else None

    wait_for(check, timeout, what or "events %s to reach %s" % (
        ids[:10] if len(ids) > 10 else ids, "/".join(want)), srv=srv)
    return {i: srv.event(i) for i in ids} if len(ids) <= 50 else None


def outbox_rows(srv, event_id=None):
    if event_id is None:
        rows = srv.query("SELECT * FROM outbox ORDER BY id")
    else:
        rows = srv.query("SELECT * FROM outbox WHERE event_id = ? ORDER BY id", (event_id,))
    for r in rows:
        try:
            r["payload_json"] = json.loads(r["payload"])
        except (TypeError, ValueError):
            r["payload_json"] = None
    return rows


def outbox_texts(srv, event_id=None):
    return [(r["payload_json"] or {}).get("text") for r in outbox_rows(srv, event_id)]


def contact_state(srv, contact_key, instance="acme-bot"):
    rows = srv.query("SELECT state FROM contact_state WHERE instance = ? AND contact_key = ?",
                     (instance, contact_key))
    return json.loads(rows[0]["state"]) if rows else None


def readyz(srv):
    r = srv.get("/readyz")
    return r.json()


def scripts_status(srv):
    return readyz(srv).get("scripts") or {}


def out_text(p):
    return (p.stdout + p.stderr).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# concurrent load


class Poster:
    """n threads posting bodies from per-thread lists over keep-alive connections; records the
    event id acknowledged for every body (key: the caller's tag) and any errors. A thread stops
    at the first connection error (the server may have been killed)."""

    def __init__(self, port, per_thread, timeout=20):
        self.port = port
        self.per_thread = per_thread  # list of lists of (tag, body)
        self.timeout = timeout
        self.lock = threading.Lock()
        self.acked = {}       # tag -> event id
        self.duplicates = {}  # tag -> event id
        self.refused = []     # (tag, status, body)
        self.errors = []      # (tag, repr)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(len(per_thread))]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout=60):
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, end - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def n_acked(self):
        with self.lock:
            return len(self.acked)

    def _run(self, n):
        conn = None
        try:
            for tag, body in self.per_thread[n]:
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                          timeout=self.timeout)
                    conn.request("POST", WEBHOOK_PATH, body=body, headers=HEADERS)
                    r = conn.getresponse()
                    data = r.read()
                    if (r.getheader("connection") or "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as e:
                    with self.lock:
                        self.errors.append((tag, repr(e)))
                    return
                try:
                    obj = json.loads(data)
                except ValueError:
                    obj = None
                with self.lock:
                    if r.status == 200 and obj and obj.get("status") == "accepted":
                        self.acked[tag] = obj["id"]
                    elif r.status == 200 and obj and obj.get("status") == "duplicate":
                        self.duplicates[tag] = obj["id"]
                    else:
                        self.refused.append((tag, r.status, data[:200]))
        finally:
            if conn is not None:
                conn.close()


def harness_main():
    harness.main()
