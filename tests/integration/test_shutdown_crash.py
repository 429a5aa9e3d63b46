"""Durability under load (DESIGN.md rule 1: acknowledge only what is committed): graceful shutdown
with SIGTERM, a kill -9 and restart on the same data directory, and `wahook events list`."""

import http.client
import json
import threading
import time

import harness
from harness import FIXTURE_APIKEY, WEBHOOK_PATH, compact, fixture, make_conf, upsert

TOKEN = "crash-tok-4c1e"
ROUTE = """
auth:
  token: {secrets: [%s]}
rate-limit: {ip-per-minute: 100000, instance-per-minute: 6000000, instance-burst: 1000000}
""" % TOKEN
HEADERS = {"x-webhook-token": TOKEN, "Content-Type": "application/json"}


class Load:
    """n threads posting distinct events over keep-alive connections (as axios does). Each
    thread stops at its quota, at the deadline, when stop is set, or after a connection error
    (the server is gone). Every outcome is recorded with its time."""

    def __init__(self, port, threads, per_thread, tag, deadline_s):
        self.port = port
        self.per_thread = per_thread
        self.tag = tag
        self.deadline = time.monotonic() + deadline_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.accepted = {}     # msg id -> event id (answered 200 accepted)
        self.duplicates = []
        self.replies = []      # (status, retry-after, body)
        self.errors = []       # (monotonic time, repr)
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(threads)]

    def count(self):
        with self.lock:
            return len(self.replies)

    def n_accepted(self):
        with self.lock:
            return len(self.accepted)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout=30):
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, end - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def run(self, n):
        conn = None
        try:
            for i in range(self.per_thread):
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    return
                mid = "%s-%d-%05d" % (self.tag, n, i)
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
                    conn.request("POST", WEBHOOK_PATH, body=upsert(mid), headers=HEADERS)
                    r = conn.getresponse()
                    data = r.read()
                    if (r.getheader("connection") or "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as e:
                    with self.lock:
                        self.errors.append((time.monotonic(), repr(e)))
                    return
                with self.lock:
                    self.replies.append((r.status, r.getheader("retry-after"), data[:200]))
                    if r.status == 200:
                        try:
                            body = json.loads(data)
                        except ValueError:
                            body = {}
                        if body.get("status") == "accepted":
                            self.accepted[mid] = body.get("id")
                        else:
                            self.duplicates.append((mid, body))
        finally:
            if conn is not None:
                conn.close()


def wait_until(pred, timeout, step=0.02):
    end = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 1):
        if pred():
            return True
        if time.monotonic() > end:
            break
        time.sleep(step)
    return pred()


class Durability(harness.WahookTestCase):
    def assert_all_stored(self, srv, accepted, what):
        rows = {r["id"]: r["dedup_id"] for r in srv.query("SELECT id, dedup_id FROM events")}
        missing = [(mid, eid) for mid, eid in accepted.items() if rows.get(eid) != mid]
        self.assertEqual(missing[:10], [], "%s: %d of %d acknowledged events are not stored "
                         "under their id (first 10 shown)" % (what, len(missing), len(accepted)))

    def test_graceful_shutdown_under_load(self):
        srv = self.new_server(make_conf(ROUTE, threads=2, top="wahook.shutdown-timeout: 5s"))
        load = Load(srv.port, 4, 200, "SD", 60).start()
        self.assertTrue(wait_until(lambda: load.count() >= 200, 30),
                        "load did not get going (%d replies, errors %r)" %
                        (load.count(), load.errors[:3]))
        t_term = time.monotonic()
        at_term = load.count()
        srv.terminate()
        try:
            rc = srv.proc.wait(15)
        except harness.subprocess.TimeoutExpired:
            load.stop.set()
            srv.kill()
            self.fail("wahook did not exit within 15 s of SIGTERM under load\n" + srv.tail())
        self.assertEqual(rc, 0, "exit status after SIGTERM\n" + srv.tail())
        self.assertTrue(load.join(30), "load threads did not finish")
        self.assertLess(at_term, 800, "SIGTERM must come mid-load")
        if harness.os.environ.get("WH_VERBOSE"):
            print("shutdown: %d replies at SIGTERM, %d replies, %d accepted, %d x 503, errors %r"
                  % (at_term, len(load.replies), len(load.accepted),
                     sum(1 for r in load.replies if r[0] == 503), load.errors))
        bad = [r for r in load.replies if r[0] not in (200, 503)]
        self.assertEqual(bad[:5], [], "only 200 or 503 during a shutdown")
        for status, retry_after, _ in load.replies:
            if status == 503:
                self.assertTrue(retry_after and retry_after.isdigit(),
                                "503 while shutting down must carry Retry-After")
        early = [e for e in load.errors if e[0] < t_term]
        self.assertEqual(early, [], "connection errors before SIGTERM")
        self.assertEqual(load.duplicates, [], "distinct events are never duplicates")
        self.assertGreater(len(load.accepted), 0)
        self.assert_all_stored(srv, load.accepted, "after SIGTERM")

    def test_kill_9_and_restart_keeps_every_acknowledged_event(self):
        srv = self.new_server(make_conf(ROUTE, threads=2, sync="normal"))
        load = Load(srv.port, 4, 500, "CR", 20).start()  # at most 2000 requests or 20 s
        wait_until(lambda: load.n_accepted() >= 300 or not any(t.is_alive() for t in load.threads),
                   15)
        srv.kill()  # kill -9 mid-load
        load.stop.set()
        self.assertTrue(load.join(30), "load threads did not finish")
        self.assertNotEqual(srv.last_rc, 0)
        self.assertLess(len(load.replies), 2000, "the kill must come mid-load")
        accepted = dict(load.accepted)
        if harness.os.environ.get("WH_VERBOSE"):
            print("crash: %d replies, %d accepted before kill -9, errors %r" %
                  (len(load.replies), len(accepted), load.errors))
        self.assertGreater(len(accepted), 0, "nothing was accepted before the kill: %r" %
                           (load.replies[:3] + load.errors[:3]))
        self.assertEqual([r for r in load.replies if r[0] != 200][:5], [],
                         "only 200 before the kill")

        srv.start()  # same config, same port, same data dir
        self.assert_all_stored(srv, accepted, "after kill -9 and restart")
        mid, eid = sorted(accepted.items(), key=lambda kv: kv[1])[-1]
        r = srv.post(upsert(mid), {"x-webhook-token": TOKEN})
        self.assertEqual(self.assertDuplicate(r, srv, "re-post of the last acknowledged event"),
                         eid)
        mid0, eid0 = sorted(accepted.items(), key=lambda kv: kv[1])[0]
        self.assertEqual(self.assertDuplicate(srv.post(upsert(mid0), {"x-webhook-token": TOKEN}),
                                              srv, "re-post of the first"), eid0)
        new = self.assertAccepted(srv.post(upsert("CR-AFTER"), {"x-webhook-token": TOKEN}), srv)
        self.assertGreater(new, max(accepted.values()), "ids are never reused")


class EventsList(harness.WahookTestCase):
    KEYS = {"id", "instance", "event", "dedup_id", "contact_key", "status", "body"}

    def listing(self, srv, rest):
        p = srv.cli(["events", "list"], ["--json"] + rest)
        self.assertEqual(p.returncode, 0, "events list %r: %s" % (rest, p.stderr.decode()))
        out = p.stdout.decode("utf-8")
        self.assertNotIn(FIXTURE_APIKEY, out, "the listing shows redacted bodies")
        rows = []
        for n, line in enumerate(out.splitlines()):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                self.fail("line %d of events list --json is not one JSON object: %r" % (n, line))
            self.assertIsInstance(obj, dict)
            self.assertTrue(self.KEYS <= set(obj), "missing keys %s in %r" %
                            (self.KEYS - set(obj), line[:300]))
            rows.append(obj)
        return rows

    def test_events_list_json(self):
        srv = self.new_server(make_conf(ROUTE))
        ids = []
        names = ("messages-upsert-text", "messages-update-read", "connection-update-open",
                 "messages-upsert-lid", "send-message")
        for name in names:
            ids.append(self.assertAccepted(
                srv.post(compact(fixture(name)), {"x-webhook-token": TOKEN}), srv, name))
        self.assertEqual(ids, sorted(ids))
        db = {r["id"]: r for r in srv.events()}

        rows = self.listing(srv, [])
        self.assertEqual([r["id"] for r in rows], ids, "every event, oldest first")
        for r in rows:
            d = db[r["id"]]
            # status is left out here: processors move events to done meanwhile
            for k in ("instance", "event", "dedup_id", "contact_key"):
                self.assertEqual(r[k], d[k], "field %s of event %d" % (k, r["id"]))
            self.assertIn(r["status"], ("pending", "done"))
            body = r["body"] if isinstance(r["body"], dict) else json.loads(r["body"])
            self.assertEqual(body.get("event"), d["event"])
        self.assertEqual(rows[0]["dedup_id"], "A5F3C8E1B2D4967F0E1A2B3C4D5E6F70")
        self.assertEqual(rows[0]["contact_key"], "34600111222")

        rows = self.listing(srv, ["--since", str(ids[1]), "--limit", "2"])
        self.assertEqual([r["id"] for r in rows], ids[2:4], "--since is exclusive, --limit caps")
        rows = self.listing(srv, ["--limit", "1"])
        self.assertEqual([r["id"] for r in rows], ids[:1])
        rows = self.listing(srv, ["--since", str(ids[-1])])
        self.assertEqual(rows, [], "nothing after the last id")

        self.assertEqual(srv.stop(), 0, srv.tail())
        rows = self.listing(srv, [])
        self.assertEqual([r["id"] for r in rows], ids, "the listing works with the server down")
        db = {r["id"]: r for r in srv.events()}
        for r in rows:
            self.assertEqual(r["status"], db[r["id"]]["status"], "status of event %d" % r["id"])


if __name__ == "__main__":
    harness.main()
