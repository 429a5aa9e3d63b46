"""Exactly one decision per event (DESIGN.md rule 2): concurrent duplicates, and the dedup key's
scope (instance, event name, status, body hash for edits)."""

import hashlib
import http.client
import json
import threading

import harness
from harness import WEBHOOK_PATH, compact, fixture, make_conf, upsert

TOKEN = "dup-tok-8a7b"
H = {"x-webhook-token": TOKEN, "Content-Type": "application/json"}
ROUTE = """
auth:
  token: {secrets: [%s]}
rate-limit: {ip-per-minute: 100000, instance-per-minute: 600000, instance-burst: 100000}
""" % TOKEN


def race(port, bodies, timeout=30):
    """Posts bodies[i] from thread i, all released by one barrier after their connections are
    open. Returns a list of (status, json-or-None, error-or-None) in thread order."""
    n = len(bodies)
    barrier = threading.Barrier(n, timeout=timeout)
    results = [None] * n

    def worker(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.connect()
            barrier.wait()
            conn.request("POST", WEBHOOK_PATH, body=bodies[i], headers=H)
            r = conn.getresponse()
            data = r.read()
            try:
                results[i] = (r.status, json.loads(data), None)
            except ValueError:
                results[i] = (r.status, None, "not JSON: %r" % data[:200])
        except Exception as e:  # noqa: BLE001 - recorded and asserted by the caller
            results[i] = (None, None, repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results


class Duplicates(harness.WahookTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.start_class_server(make_conf(ROUTE, threads=4))

    def post(self, raw):
        return self.srv.post(raw, {"x-webhook-token": TOKEN})

    def rows_for(self, dedup_id):
        return self.srv.query("SELECT id, instance, event FROM events WHERE dedup_id = ?",
                              (dedup_id,))

    def check_race(self, results, dedup_id, what):
        errors = [r for r in results if r is None or r[0] != 200]
        self.assertEqual(errors, [], "%s: every concurrent copy is answered 200" % what)
        statuses = sorted(r[1].get("status") for r in results)
        self.assertEqual(statuses.count("accepted"), 1,
                         "%s: exactly one accepted, got %r" % (what, statuses))
        self.assertEqual(statuses.count("duplicate"), len(results) - 1, what)
        ids = {r[1].get("id") for r in results}
        self.assertEqual(len(ids), 1, "%s: every reply names the same id: %r" % (what, ids))
        rows = self.rows_for(dedup_id)
        self.assertEqual([r["id"] for r in rows], list(ids), "%s: exactly one row" % what)

    def test_16_concurrent_identical_posts(self):
        for round_ in range(5):
            mid = "DUP-RACE-%d" % round_
            self.check_race(race(self.srv.port, [upsert(mid)] * 16), mid, "round %d" % round_)

    def test_concurrent_instance_and_global_delivery(self):
        # the same event through the instance and the global webhook: envelopes differ
        mid = "DUP-RACE-GLOBAL"
        a = json.loads(upsert(mid))
        b = dict(a, destination="https://global.example.com/hook/messages-upsert")
        bodies = [compact(a) if i % 2 else compact(b) for i in range(16)]
        self.check_race(race(self.srv.port, bodies), mid, "instance + global")

    def test_edit_is_a_new_event(self):
        orig = fixture("messages-upsert-text")
        orig["data"]["key"]["id"] = "DUP-EDIT-ORIG"
        raw = compact(orig)
        first = self.assertAccepted(self.post(raw), self.srv, "original")
        edit = {
            "event": "messages.edited", "instance": "acme-bot",
            "data": {"key": dict(orig["data"]["key"]), "type": "MESSAGE_EDIT",
                     "editedMessage": {"conversation": "Hola, ¿tenéis cita para el jueves?"},
                     "timestampMs": "1761141999000"},
            "destination": orig["destination"], "date_time": "2025-10-22T11:06:39.000Z",
            "sender": orig["sender"], "server_url": orig["server_url"], "apikey": orig["apikey"]}
        eraw = compact(edit)
        second = self.assertAccepted(self.post(eraw), self.srv,
                                     "an edit carries the original id but is another event")
        self.assertNotEqual(second, first)
        row = self.srv.event(second)
        self.assertEqual(row["event"], "messages.edited")
        self.assertNotEqual(row["dedup_id"], "DUP-EDIT-ORIG")
        self.assertEqual(row["dedup_id"], "sha256:" + hashlib.sha256(eraw).hexdigest())
        self.assertEqual(self.assertDuplicate(self.post(eraw), self.srv, "the edit retried"),
                         second)
        # a second, different edit of the same message is a third event
        edit["data"]["editedMessage"] = {"conversation": "…o el viernes"}
        third = self.assertAccepted(self.post(compact(edit)), self.srv, "second edit")
        self.assertNotIn(third, (first, second))
        self.assertEqual(self.assertDuplicate(self.post(raw), self.srv, "original again"), first)

    def test_dedup_scope_instance_and_event(self):
        a = self.assertAccepted(self.post(upsert("DUP-SCOPE", instance="acme-bot")), self.srv)
        b = self.assertAccepted(self.post(upsert("DUP-SCOPE", instance="other-bot")), self.srv,
                                "same key.id on another instance is another event")
        self.assertNotEqual(a, b)
        sm = fixture("send-message")
        sm["data"]["key"]["id"] = "DUP-SCOPE"
        c = self.assertAccepted(self.post(compact(sm)), self.srv,
                                "send.message with the same key.id is another event")
        self.assertNotIn(c, (a, b))
        self.assertEqual(self.srv.event(c)["dedup_id"], "DUP-SCOPE")
        self.assertEqual(self.assertDuplicate(self.post(compact(sm)), self.srv), c)

    def test_receipts_dedup_on_keyid_and_status(self):
        upd = fixture("messages-update-read")
        upd["data"]["keyId"] = "DUP-RCPT"
        upd["data"]["status"] = "DELIVERY_ACK"
        d = self.assertAccepted(self.post(compact(upd)), self.srv, "DELIVERY_ACK")
        upd["data"]["status"] = "READ"
        r = self.assertAccepted(self.post(compact(upd)), self.srv, "READ is another event")
        self.assertNotEqual(d, r)
        upd["date_time"] = "2025-10-22T11:59:59.000Z"  # a redelivery with other envelope bytes
        self.assertEqual(self.assertDuplicate(self.post(compact(upd)), self.srv,
                                              "READ again"), r)
        self.assertEqual(self.srv.event(r)["dedup_id"], "DUP-RCPT:READ")


if __name__ == "__main__":
    harness.main()
