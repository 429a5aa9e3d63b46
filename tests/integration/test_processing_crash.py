"""The transactional outbox across a crash (DESIGN.md rule 3): under load, kill -9 the server,
restart it on the same data directory, let Evolution's retries of the unacknowledged events
arrive, and check that every event ends done with exactly one outbox row, never zero, never
two."""

import json
import os
import sys

import harness
import proc_helpers as ph
from proc_helpers import handlers, script_server, text_body

MAIN = handlers("""
h["messages.upsert"] = function(ev)
  -- some work per event, so that processing lags behind ingest and the kill lands mid-way
  local x = 0
  for i = 1, 300000 do x = x + i end
  wahook.send_text(ev.msg.phone, "r:" .. ev.msg.text)
end
""")

THREADS = 5
PER_THREAD = 100
CONTACTS = 25


class CrashDuringProcessing(harness.WahookTestCase):
    def test_kill9_mid_load_then_restart(self):
        srv = script_server(self, MAIN, top="wahook.processors: 2", threads=4)
        per_thread = []
        for t in range(THREADS):
            items = []
            for i in range(PER_THREAD):
                c = (t * PER_THREAD + i) % CONTACTS
                tag = "CR-%d-%03d" % (t, i)
                items.append((tag, text_body(tag, text=tag, phone="3463%07d" % c,
                                             lid="7770%011d" % c)))
            per_thread.append(items)
        all_items = dict(kv for items in per_thread for kv in items)

        poster = ph.Poster(srv.port, per_thread, timeout=10).start()
        ph.wait_for(lambda: poster.n_acked() >= 200 or
                    not any(t.is_alive() for t in poster.threads),
                    30, "200 events acknowledged", srv=srv)
        srv.kill()
        at_kill = poster.n_acked()
        # what the crash left: acknowledged events still pending are the interesting ones
        left = srv.query("SELECT status, count(*) AS n FROM events GROUP BY status")
        self.assertTrue(any(r["status"] == "pending" and r["n"] > 0 for r in left),
                        "the kill interrupted processing (pending events left): %r" % left)
        self.assertTrue(poster.join(30), "posting threads stop once the server is gone")
        self.assertEqual(poster.refused, [], "nothing refused before the kill")
        self.assertLess(at_kill, len(all_items), "killed before the load finished")
        acked_before = dict(poster.acked)

        srv.start()
        # Evolution retries what was not acknowledged (it may have been committed: duplicate).
        rest = [(tag, body) for tag, body in all_items.items() if tag not in acked_before]
        retry = ph.Poster(srv.port, [rest[i::4] for i in range(4)]).start()
        self.assertTrue(retry.join(60), "re-posting finished")
        self.assertEqual((retry.errors, retry.refused), ([], []))
        self.assertEqual(len(retry.acked) + len(retry.duplicates), len(rest))

        def drained():
            n = srv.query("SELECT count(*) AS n FROM events WHERE status = 'pending'")[0]["n"]
            return n == 0
        ph.wait_for(drained, 60, "no pending events after the restart", interval=0.2, srv=srv)

        events = srv.query("SELECT id, dedup_id, status FROM events ORDER BY id")
        self.assertEqual(len(events), len(all_items), "one event per message, no more, no less")
        self.assertEqual(sorted(e["dedup_id"] for e in events), sorted(all_items))
        by_id = {e["id"]: e for e in events}
        for tag, eid in acked_before.items():
            self.assertIn(eid, by_id, "acknowledged event %d (%s) survived the crash" % (eid, tag))
            self.assertEqual(by_id[eid]["dedup_id"], tag)
        for tag, eid in retry.duplicates.items():
            self.assertEqual(by_id[eid]["dedup_id"], tag)
        not_done = [e for e in events if e["status"] != "done"]
        self.assertEqual(not_done, [], "every event ends done")

        counts = srv.query("SELECT e.id, e.dedup_id, e.status, count(o.id) AS n, "
                           "min(o.payload) AS payload FROM events e "
                           "LEFT JOIN outbox o ON o.event_id = e.id GROUP BY e.id")
        zero = [c["id"] for c in counts if c["status"] == "done" and c["n"] == 0]
        many = [(c["id"], c["n"]) for c in counts if c["n"] > 1]
        self.assertEqual(zero, [], "done events without their outbox row")
        self.assertEqual(many, [], "events with more than one outbox row")
        for c in counts:
            p = json.loads(c["payload"])
            self.assertEqual(p.get("text"), "r:" + c["dedup_id"], "the row belongs to its event")
        orphans = srv.query("SELECT count(*) AS n FROM outbox WHERE event_id IS NULL OR "
                            "event_id NOT IN (SELECT id FROM events)")
        self.assertEqual(orphans, [{"n": 0}])
        if os.environ.get("WH_VERBOSE"):
            sys.stderr.write("\ncrash: %d acked at kill, store after kill %r, %d re-posted "
                             "(%d already stored)\n" % (at_kill, left, len(rest),
                                                         len(retry.duplicates)))


if __name__ == "__main__":
    harness.main()
