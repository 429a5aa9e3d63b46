"""Processing (DESIGN.md rules 3-5 and "What the runtime records natively"): an event runs its
handler once and commits its actions, state and status together; processors wake on commit;
per-contact order holds under concurrent load; script errors, timeouts and memory blowups are
retried and end dead without holding back other contacts; native records are written whatever
the handler does."""

import json
import time

import harness
import proc_helpers as ph
from harness import compact, fixture
from proc_helpers import DEFAULT_PHONE, handlers, post, script_server, text_body

GREET = handlers("""
h["messages.upsert"] = function(ev)
  wahook.send_text(ev.msg.phone, "hola " .. ev.msg.push_name)
  wahook.state.set({n = (wahook.state.get().n or 0) + 1})
end
""")


class ProcessOnce(harness.WahookTestCase):
    def test_event_processed_once_with_outbox_and_state(self):
        srv = script_server(self, GREET, top="wahook.processors: 2")
        eid = post(self, srv, text_body("PROC-ONCE-1"))

        # Poll fast in one statement (one read snapshot): the status and the outbox row must
        # never be seen apart.
        c = srv.db()
        seen = []
        try:
            deadline = time.monotonic() + 15
            for _ in range(200000):
                row = c.execute(
                    "SELECT e.status, (SELECT count(*) FROM outbox o WHERE o.event_id = e.id), "
                    "(SELECT count(*) FROM contact_state s WHERE s.contact_key = e.contact_key) "
                    "FROM events e WHERE e.id = ?", (eid,)).fetchone()
                status, nout, nstate = row[0], row[1], row[2]
                if not seen or seen[-1] != (status, nout, nstate):
                    seen.append((status, nout, nstate))
                if status == "done" or time.monotonic() > deadline:
                    break
                time.sleep(0.001)
        finally:
            c.close()
        self.assertEqual(seen[-1][0], "done", "event %d not done within 15 s: %r\n%s" %
                         (eid, seen, srv.tail(20)))
        for status, nout, nstate in seen:
            if status == "done":
                self.assertEqual((nout, nstate), (1, 1),
                                 "done without its outbox row and state: %r" % seen)
            else:
                self.assertEqual((nout, nstate), (0, 0),
                                 "outbox/state visible before the event is done: %r" % seen)

        ev = srv.event(eid)
        self.assertEqual(ev["contact_key"], DEFAULT_PHONE)
        self.assertTrue(ev["script_version"], "events.script_version is set: %r" % ev)
        self.assertRegex(ev["script_version"], r"^[0-9a-f]{16}$")
        self.assertTrue(ev["processed_at"], "events.processed_at is set: %r" % ev)
        # the store counts runs (1 here); a count of failed runs (0) would do as well
        self.assertIn(ev["attempts"], (0, 1), "one successful run: %r" % ev["attempts"])
        self.assertIsNone(ev["last_error"])
        rows = ph.outbox_rows(srv)
        self.assertEqual(len(rows), 1, rows)
        r = rows[0]
        self.assertEqual(r["event_id"], eid)
        self.assertEqual(r["target"], "evolution")
        self.assertEqual(r["instance"], "acme-bot")
        self.assertEqual(r["contact_key"], DEFAULT_PHONE)
        self.assertIsInstance(r["payload_json"], dict, "payload is a JSON object: %r" % r)
        self.assertEqual(r["payload_json"].get("to"), DEFAULT_PHONE, r)
        self.assertEqual(r["payload_json"].get("text"), "hola María López", r)
        self.assertEqual(ph.contact_state(srv, DEFAULT_PHONE), {"n": 1})

        # A duplicate creates no work; a later event of the same contact is the barrier.
        self.assertDuplicate(ph.post_raw(srv, text_body("PROC-ONCE-1")), srv)
        eid2 = post(self, srv, text_body("PROC-ONCE-2"))
        ph.wait_status(srv, [eid2], ("done",))
        self.assertEqual([x["event_id"] for x in ph.outbox_rows(srv)], [eid, eid2],
                         "one outbox row per event, none for the duplicate")
        self.assertEqual(ph.contact_state(srv, DEFAULT_PHONE), {"n": 2})
        self.assertEqual(len(srv.events()), 2)


    def test_status_outbox_and_state_commit_together_under_load(self):
        main = GREET.replace('h["messages.upsert"] = function(ev)\n',
                             'h["messages.upsert"] = function(ev)\n'
                             '  local x = 0\n  for i = 1, 200000 do x = x + i end\n')
        srv = script_server(self, main, top="wahook.processors: 2")
        phones = ["3461900000%d" % c for c in range(3)]
        per_thread = [[(("c%d" % c, i), text_body("ATOM-%d-%02d" % (c, i), phone=phones[c],
                                                  lid="5550000000000%d" % c))
                       for i in range(40)] for c in range(3)]
        poster = ph.Poster(srv.port, per_thread).start()
        c = srv.db()
        partial = 0
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                # one statement: one read snapshot of events, outbox and state together
                rows = c.execute(
                    "SELECT e.contact_key, "
                    " sum(e.status = 'done'), count(*), "
                    " (SELECT count(*) FROM outbox o JOIN events x ON x.id = o.event_id "
                    "  WHERE x.contact_key = e.contact_key), "
                    " (SELECT sum((SELECT count(*) FROM outbox o WHERE o.event_id = y.id) != "
                    "             (y.status = 'done')) FROM events y "
                    "  WHERE y.contact_key = e.contact_key), "
                    " (SELECT state FROM contact_state s WHERE s.contact_key = e.contact_key) "
                    "FROM events e GROUP BY e.contact_key").fetchall()
                finished = not any(t.is_alive() for t in poster.threads)
                total_done = 0
                for key, done, n, nout, mismatched, state in rows:
                    self.assertEqual(mismatched, 0, "%s: an event done without its outbox row, "
                                     "or an outbox row of an event not done" % key)
                    self.assertEqual(nout, done, "%s: outbox rows = done events" % key)
                    n_state = json.loads(state)["n"] if state else 0
                    self.assertEqual(n_state, done, "%s: state.n = done events" % key)
                    total_done += done
                    if 0 < done < n:
                        partial += 1
                if finished and total_done == 120:
                    break
                time.sleep(0.002)
        finally:
            c.close()
        self.assertTrue(poster.join(10))
        self.assertEqual(len(poster.acked), 120)
        ph.wait_status(srv, list(poster.acked.values()), ("done",), timeout=10)
        self.assertGreater(partial, 0, "some snapshots caught processing half-way")


class WakeUp(harness.WahookTestCase):
    def test_commit_wakes_processor_despite_long_poll_interval(self):
        srv = script_server(self, GREET, top="wahook.processors: 2\n"
                                              "wahook.processing.poll-interval: 60s")
        time.sleep(0.5)  # let the processors go to sleep on their 60 s poll
        for i in range(3):
            eid = post(self, srv, text_body("WAKE-%d" % i))
            ph.wait_status(srv, [eid], ("done",), timeout=10,
                           what="event %d processed though the poll interval is 60 s" % eid)
            time.sleep(0.3)  # idle again before the next one
        self.assertEqual(len(ph.outbox_rows(srv)), 3)


class Order(harness.WahookTestCase):
    CONTACTS = 20
    PER_CONTACT = 15
    THREADS = 8

    def test_per_contact_order_under_concurrent_load(self):
        main = handlers("""
h["messages.upsert"] = function(ev)
  local s = wahook.state.get()
  local seq = s.seq or {}
  seq[#seq + 1] = ev.msg.text
  s.seq = seq
  wahook.state.set(s)
end
""")
        srv = script_server(self, main, top="wahook.processors: 4", threads=4)
        phones = ["3461%07d" % (1000 + c) for c in range(self.CONTACTS)]
        lids = ["9990%011d" % (500 + c) for c in range(self.CONTACTS)]
        per_thread = [[] for _ in range(self.THREADS)]
        # one thread per contact, each thread interleaving its contacts in sequence order
        for seq in range(self.PER_CONTACT):
            for c in range(self.CONTACTS):
                tag = (c, seq)
                body = text_body("ORD-%02d-%02d" % (c, seq), text="c%02d-s%02d" % (c, seq),
                                 phone=phones[c], lid=lids[c])
                per_thread[c % self.THREADS].append((tag, body))
        poster = ph.Poster(srv.port, per_thread).start()
        self.assertTrue(poster.join(60), "posting did not finish within 60 s")
        self.assertEqual(poster.errors, [])
        self.assertEqual(poster.refused, [])
        self.assertEqual(len(poster.acked), self.CONTACTS * self.PER_CONTACT)

        ids = list(poster.acked.values())

        def all_done():
            rows = srv.query("SELECT status, count(*) AS n FROM events GROUP BY status")
            counts = {r["status"]: r["n"] for r in rows}
            return counts if counts.get("done", 0) == len(ids) else None

        ph.wait_for(all_done, 60, "all %d events done" % len(ids), interval=0.2, srv=srv)
        self.assertEqual(srv.query("SELECT count(*) AS n FROM events WHERE status != 'done'"),
                         [{"n": 0}])
        for c in range(self.CONTACTS):
            acked = sorted((poster.acked[(c, s)], "c%02d-s%02d" % (c, s))
                           for s in range(self.PER_CONTACT))
            expected = [text for _, text in acked]
            self.assertEqual(expected, ["c%02d-s%02d" % (c, s) for s in range(self.PER_CONTACT)],
                             "one thread posting in order gets increasing ids")
            rows = srv.query("SELECT contact_key FROM events WHERE id = ?", (acked[0][0],))
            self.assertEqual(rows[0]["contact_key"], phones[c])
            st = ph.contact_state(srv, phones[c])
            self.assertIsNotNone(st, "contact %s has state" % phones[c])
            self.assertEqual(st.get("seq"), expected,
                             "contact %s saw its events in acknowledged order" % phones[c])


FAILING = handlers("""
h["messages.upsert"] = function(ev)
  local t = ev.msg.text or ""
  wahook.send_text(ev.msg.phone, "queued " .. t)
  wahook.state.set({last = t})
  if t:find("fail", 1, true) then
    error("boom")
  elseif t:find("pcall-loop", 1, true) then
    local ok, e = pcall(function() while true do end end)
    wahook.send_text(ev.msg.phone, "escaped the kill: " .. tostring(e))
  elseif t:find("loop", 1, true) then
    while true do end
  elseif t:find("memory", 1, true) then
    local big = {}
    while true do big[#big + 1] = string.rep("x", 1e6) .. #big end
  end
end
""")


class Failures(harness.WahookTestCase):
    def test_error_retries_then_dead_and_strict_fifo(self):
        srv = script_server(self, FAILING, top="""
wahook.processors: 2
wahook.processing.max-attempts: 3
wahook.processing.retry-base: 500ms
wahook.processing.retry-max: 1s
""")
        a_phone, b_phone = "34611000001", "34611000002"
        bad = post(self, srv, text_body("FAIL-A1", text="please fail", phone=a_phone,
                                        lid="11100000000001"))
        later = post(self, srv, text_body("FAIL-A2", text="after", phone=a_phone,
                                          lid="11100000000001"))
        others = [post(self, srv, text_body("FAIL-B%d" % i, text="ok %d" % i, phone=b_phone,
                                            lid="11100000000002")) for i in range(3)]

        # Other contacts keep flowing while A's first event is being retried.
        ph.wait_status(srv, others, ("done",), timeout=10,
                       what="contact B's events done while contact A retries")
        first = srv.event(bad)
        self.assertEqual(first["status"], "pending",
                         "the failing event is retried (not dead) after its first failure: %r"
                         % {k: first[k] for k in ("status", "attempts", "last_error")})

        # While A's failing event is not dead, A's later event must not run.
        attempts_seen = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = srv.query("SELECT id, status, attempts, last_error FROM events "
                             "WHERE id IN (?, ?)", (bad, later))
            by = {r["id"]: r for r in rows}
            attempts_seen.add(by[bad]["attempts"])
            if by[bad]["status"] == "dead":
                break
            self.assertEqual((by[later]["status"], by[later]["attempts"]), ("pending", 0),
                             "strict FIFO: A's later event waits, never run, while the earlier "
                             "one is retried: %r" % by)
            if by[bad]["attempts"]:
                err = by[bad]["last_error"] or ""
                self.assertIn("boom", err)
            time.sleep(0.02)
        dead = srv.event(bad)
        self.assertEqual(dead["status"], "dead", "ends dead after max-attempts: %r" % dead)
        self.assertEqual(dead["attempts"], 3)
        self.assertTrue({1, 2} & attempts_seen, "attempts grew one by one: %r" % attempts_seen)
        err = dead["last_error"] or ""
        self.assertIn("boom", err)
        self.assertRegex(err, r"main\.lua:\d+:", "the error names main.lua:line")
        self.assertIn("traceback", err.lower(), "the error carries a traceback: %r" % err)

        ph.wait_status(srv, [later], ("done",), timeout=10,
                       what="A's later event runs once the failing one is dead")
        self.assertEqual(ph.outbox_rows(srv, bad), [],
                         "nothing the failing handler queued before error() is in the outbox")
        self.assertEqual(ph.outbox_texts(srv, later), ["queued after"])
        for o in others:
            self.assertEqual(len(ph.outbox_rows(srv, o)), 1)
        # the failed runs' state.set never committed; the later event's did
        self.assertEqual(ph.contact_state(srv, a_phone), {"last": "after"})

    def _kill_case(self, srv, mid, text, phone, expect_re):
        eid = post(self, srv, text_body(mid, text=text, phone=phone, lid=None))
        ph.wait_status(srv, [eid], ("dead",), timeout=20, what="%s event dead" % text)
        row = srv.event(eid)
        self.assertEqual(row["attempts"], 2, row)
        self.assertRegex(row["last_error"] or "", expect_re, "last_error of %s" % text)
        self.assertEqual(ph.outbox_rows(srv, eid), [],
                         "a killed run's queued send_text never reaches the outbox")
        return eid

    def test_timeout_memory_and_pcall(self):
        srv = script_server(self, FAILING, top="""
wahook.processors: 2
wahook.processing.max-attempts: 2
wahook.processing.retry-base: 50ms
wahook.processing.retry-max: 100ms
wahook.scripts.timeout: 200ms
""")
        self._kill_case(srv, "KILL-LOOP", "loop", "34612000001", r"timed out")
        self._kill_case(srv, "KILL-PCALL", "pcall-loop", "34612000002", r"timed out")
        self._kill_case(srv, "KILL-MEM", "memory", "34612000003", r"(?i)memory")
        # the VMs still work afterwards
        ok = post(self, srv, text_body("KILL-AFTER", text="fine", phone="34612000004", lid=None))
        ph.wait_status(srv, [ok], ("done",))
        self.assertEqual(ph.outbox_texts(srv, ok), ["queued fine"])
        self.assertEqual(ph.outbox_texts(srv), ["queued fine"],
                         "nothing from the killed runs, including the pcall escape text")


THROWING = handlers("""
h["*"] = function(ev)
  error("handler always fails")
end
""")

RECEIPT_ID = "3EB07F3A9C1D2E4B5A6F70"  # send-message's key.id, what messages-update-read names


class NativeRecords(harness.WahookTestCase):
    @classmethod
    def setUpClass(cls):
        conf = ph.script_conf("wahook.processors: 2\nwahook.processing.max-attempts: 1")
        cls.srv = harness.Server(conf, name=cls.__name__)
        cls.class_servers = [cls.srv]
        try:
            ph.install_scripts(cls.srv, THROWING)
            cls.srv.start()
        except Exception:
            cls.class_servers = None
            cls.srv.cleanup()
            raise

    def post_wait(self, body, want=("dead",)):
        eid = post(self, self.srv, body)
        ph.wait_status(self.srv, [eid], want)
        return eid

    def message(self, wa_id):
        rows = self.srv.query("SELECT * FROM messages WHERE instance = 'acme-bot' AND wa_id = ?",
                              (wa_id,))
        return rows[0] if rows else None

    def test_inbound_text_message_and_contact(self):
        eid = self.post_wait(text_body("NATIVE-IN-1", text="quiero una cita",
                                       phone="34613000001", lid="22200000000001",
                                       push_name="Ana Ruiz"))
        self.assertIn("handler always fails", self.srv.event(eid)["last_error"] or "")
        m = self.message("NATIVE-IN-1")
        self.assertIsNotNone(m, "a messages row even though the handler failed")
        self.assertEqual(m["direction"], "in")
        self.assertEqual(m["origin"], "contact")
        self.assertEqual(m["type"], "text")
        self.assertEqual(m["text"], "quiero una cita")
        self.assertEqual(m["contact_key"], "34613000001")
        c = self.srv.query("SELECT * FROM contacts WHERE instance = 'acme-bot' AND "
                           "contact_key = ?", ("34613000001",))
        self.assertEqual(len(c), 1, "one contacts row")
        self.assertEqual(c[0]["push_name"], "Ana Ruiz")
        self.assertEqual(c[0]["phone"], "34613000001")
        self.assertIn(c[0]["lid"], ("22200000000001@lid", "22200000000001"))
        self.assertTrue(c[0]["first_seen"] and c[0]["last_seen"])

    def test_api_send_then_receipts_raise_status(self):
        sm = fixture("send-message")
        sm["data"]["key"]["id"] = "NATIVE-API-1"
        self.post_wait(compact(sm))
        m = self.message("NATIVE-API-1")
        self.assertIsNotNone(m)
        self.assertEqual(m["origin"], "api")
        self.assertEqual(m["direction"], "out")
        self.assertEqual(m["status"], "PENDING")
        rd = fixture("messages-update-read")
        rd["data"]["keyId"] = "NATIVE-API-1"
        self.post_wait(compact(rd))
        m = self.message("NATIVE-API-1")
        self.assertEqual(m["status"], "READ", "the receipt raised the status")
        rank_read = m["status_rank"]
        dl = fixture("messages-update-delivery")
        dl["data"]["keyId"] = "NATIVE-API-1"
        dl["data"]["status"] = "DELIVERY_ACK"
        self.post_wait(compact(dl))
        m = self.message("NATIVE-API-1")
        self.assertEqual(m["status"], "READ", "a later, lower receipt does not lower the status")
        self.assertEqual(m["status_rank"], rank_read)

    def test_receipt_before_message_is_applied_later(self):
        rd = fixture("messages-update-read")
        rd["data"]["keyId"] = "NATIVE-EARLY-1"
        self.post_wait(compact(rd))
        sm = fixture("send-message")
        sm["data"]["key"]["id"] = "NATIVE-EARLY-1"
        self.post_wait(compact(sm))
        m = self.message("NATIVE-EARLY-1")
        self.assertIsNotNone(m)
        self.assertEqual(m["status"], "READ", "the early receipt was kept and applied")

    def test_phone_typed_from_me(self):
        fm = fixture("messages-upsert-fromme")
        fm["data"]["key"]["id"] = "NATIVE-PHONE-1"
        self.post_wait(compact(fm))
        m = self.message("NATIVE-PHONE-1")
        self.assertIsNotNone(m)
        self.assertEqual(m["origin"], "phone")
        self.assertEqual(m["direction"], "out")

    def test_connection_history_and_qr(self):
        first = self.post_wait(ph.fixture_body("connection-update-open"))
        second = self.post_wait(ph.fixture_body("connection-update-close"))
        rows = self.srv.query("SELECT state, status_reason, event_id FROM connection_history "
                              "WHERE instance = 'acme-bot' AND event_id IN (?, ?) ORDER BY id",
                              (first, second))
        self.assertEqual([(r["state"], r["status_reason"]) for r in rows],
                         [("open", 200), ("close", 401)])
        qr = fixture("qrcode-updated")
        self.post_wait(compact(qr))
        rows = self.srv.query("SELECT * FROM qr_latest WHERE instance = 'acme-bot'")
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["qr_base64"], qr["data"]["qrcode"]["base64"])
        self.assertEqual(rows[0]["code"], qr["data"]["qrcode"]["code"])


if __name__ == "__main__":
    harness.main()
