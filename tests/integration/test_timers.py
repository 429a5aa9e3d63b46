"""Durable timers (DESIGN.md "Lua: what a script sees"): wahook.after schedules a timer of the
event's contact that later calls the "timer" handler; the same name replaces; wahook.cancel
removes; a timer survives a restart."""

import json
import time

import harness
import proc_helpers as ph
from proc_helpers import DEFAULT_PHONE, handlers, post, script_server, text_body

MAIN = handlers("""
h["messages.upsert"] = function(ev)
  local t = ev.msg.text
  if t == "set" then
    wahook.after(1, "followup", {n = 1})
  elseif t == "set2" then
    wahook.after(1, "followup", {n = 2})
  elseif t == "twice" then
    wahook.after(1, "followup", {n = 3})
    wahook.after(1, "followup", {n = 4})
  elseif t == "cancel" then
    wahook.cancel("followup")
    wahook.after(1.5, "probe", {n = 9})
  elseif t == "later" then
    wahook.after(3, "followup", {n = 5})
  end
end

h["connection.update"] = function(ev)
  wahook.state.set({state = ev.msg.state})
  wahook.after(0.5, "conn-check", {n = ev.msg.state})
end

h["timer"] = function(ev)
  -- instance-level timers have no contact (ev.contact is cjson.null)
  local to = type(ev.contact) == "string" and ev.contact or "34600000001"
  wahook.send_text(to, "timer " .. ev.timer .. " " .. tostring(ev.payload.n))
end
""")

TOP = "wahook.processors: 2"


class Timers(harness.WahookTestCase):
    def timers(self, srv):
        return srv.query("SELECT * FROM timers ORDER BY id")

    def fired(self, srv):
        return ph.outbox_texts(srv)

    def set_timer(self, srv, mid, text):
        eid = post(self, srv, text_body(mid, text=text))
        ph.wait_status(srv, [eid], ("done",))
        return eid

    def test_timer_fires(self):
        srv = script_server(self, MAIN, top=TOP)
        t0 = time.time()
        self.set_timer(srv, "TM-FIRE-1", "set")
        rows = self.timers(srv)
        self.assertEqual(len(rows), 1, "one timer row committed with the event: %r" % rows)
        self.assertEqual((rows[0]["name"], rows[0]["contact_key"], rows[0]["instance"]),
                         ("followup", DEFAULT_PHONE, "acme-bot"))
        self.assertEqual(json.loads(rows[0]["payload"]), {"n": 1})
        due = rows[0]["due_at"]
        self.assertGreaterEqual(due, int(t0 * 1000) + 900, "due about 1 s after the event")
        self.assertEqual(ph.outbox_rows(srv), [], "nothing sent before the timer is due")

        got = ph.wait_for(lambda: ph.outbox_rows(srv), 10, "the timer's send_text", srv=srv)
        self.assertEqual(len(got), 1, got)
        self.assertEqual(got[0]["payload_json"].get("text"), "timer followup 1")
        self.assertEqual(got[0]["payload_json"].get("to"), DEFAULT_PHONE)
        self.assertEqual(got[0]["contact_key"], DEFAULT_PHONE)
        self.assertIsNone(got[0]["event_id"], "actions of a timer run have no event id")
        self.assertGreaterEqual(got[0]["created_at"], due, "not fired before it was due")
        ph.wait_for(lambda: self.timers(srv) == [], 5, "the fired timer row to be gone", srv=srv)

    def test_same_name_replaces(self):
        srv = script_server(self, MAIN, top=TOP)
        self.set_timer(srv, "TM-REPL-1", "twice")
        rows = self.timers(srv)
        self.assertEqual(len(rows), 1, "two after() of one name in one run: one timer")
        self.assertEqual(json.loads(rows[0]["payload"]), {"n": 4})
        self.set_timer(srv, "TM-REPL-2", "set2")
        rows = self.timers(srv)
        self.assertEqual(len(rows), 1, "a later event's after() of that name replaces it")
        self.assertEqual(json.loads(rows[0]["payload"]), {"n": 2})
        ph.wait_for(lambda: self.fired(srv), 10, "the timer to fire", srv=srv)
        # A second firing would be due at the same time; give it well over that.
        time.sleep(1.5)
        self.assertEqual(self.fired(srv), ["timer followup 2"], "one firing, the last payload")
        self.assertEqual(self.timers(srv), [])

    def test_cancel(self):
        srv = script_server(self, MAIN, top=TOP)
        self.set_timer(srv, "TM-CANCEL-1", "set")
        self.assertEqual([r["name"] for r in self.timers(srv)], ["followup"])
        self.set_timer(srv, "TM-CANCEL-2", "cancel")
        self.assertEqual([r["name"] for r in self.timers(srv)], ["probe"],
                         "cancel removed the timer; the probe is set")
        # The probe is due after the cancelled timer would have been: once it has fired, the
        # cancelled one would have too.
        ph.wait_for(lambda: self.fired(srv), 10, "the probe timer", srv=srv)
        time.sleep(0.3)
        self.assertEqual(self.fired(srv), ["timer probe 9"])

    def test_timer_survives_restart(self):
        srv = script_server(self, MAIN, top=TOP)
        self.set_timer(srv, "TM-RESTART-1", "later")
        rows = self.timers(srv)
        self.assertEqual(len(rows), 1)
        due = rows[0]["due_at"]
        self.assertEqual(srv.stop(), 0, "clean SIGTERM exit")
        stopped_at = time.time() * 1000
        self.assertLess(stopped_at, due, "the server stopped before the timer was due")
        srv.start()
        got = ph.wait_for(lambda: ph.outbox_rows(srv), 15, "the timer set before the restart",
                          srv=srv)
        self.assertEqual([r["payload_json"].get("text") for r in got], ["timer followup 5"])
        self.assertGreaterEqual(got[0]["created_at"], due)
        time.sleep(0.5)
        self.assertEqual(len(ph.outbox_rows(srv)), 1, "fired once")

    def test_instance_level_timer_and_state(self):
        srv = script_server(self, MAIN, top=TOP)
        eid = post(self, srv, ph.fixture_body("connection-update-open"))
        ph.wait_status(srv, [eid], ("done",))
        self.assertIsNone(srv.event(eid)["contact_key"])
        st = srv.query("SELECT contact_key, state FROM contact_state WHERE instance = 'acme-bot'")
        self.assertEqual([(r["contact_key"], json.loads(r["state"])) for r in st],
                         [("", {"state": "open"})], "state of an event without a contact "
                         "belongs to the instance")
        got = ph.wait_for(lambda: ph.outbox_rows(srv), 10, "the instance timer", srv=srv)
        self.assertEqual([(r["contact_key"], r["payload_json"].get("text")) for r in got],
                         [("", "timer conn-check open")])


if __name__ == "__main__":
    harness.main()
