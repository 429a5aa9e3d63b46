"""The script-facing command line (`wahook try`, `check`, `events show|retry`, scripts.h and
main.c) and the Lua sandbox seen from outside: a require that leaves the scripts directory
fails the check; io, os.getenv and friends are absent in a running handler."""

import json
import os

import harness
import proc_helpers as ph
from harness import compact, fixture
from proc_helpers import DEFAULT_PHONE, handlers, post, script_server, text_body

COUNTER = handlers("""
h["messages.upsert"] = function(ev)
  local s = wahook.state.get()
  wahook.send_text(ev.msg.phone, "hola " .. ev.msg.push_name .. " n=" .. tostring(s.n))
  wahook.state.set({n = (s.n or 0) + 1})
end
""")

THROWS = handlers("""
local function helper(x)
  error("kaput " .. x)
end
h["messages.upsert"] = function(ev)
  wahook.send_text(ev.msg.phone, "never")
  helper("now")
end
""")

SYNTAX = """local wahook = require "wahook"
local h = {}
h["messages.upsert"] = function(ev)
  if then
end
return h
"""


def event_file(srv, obj=None):
    path = os.path.join(srv.tmp, "event.json")
    with open(path, "wb") as f:
        f.write(compact(obj if obj is not None else fixture("messages-upsert-text")))
    return path


class Try(harness.WahookTestCase):
    def conf_only(self, main):
        return script_server(self, main, start=False)

    def run_try(self, srv, extra=()):
        p = srv.cli(["try"], [event_file(srv)] + list(extra))
        out = p.stdout.decode("utf-8", "replace")
        try:
            obj = json.loads(out)
        except ValueError:
            self.fail("wahook try prints JSON, got %r (stderr %r)" % (out[:500], p.stderr[:500]))
        return p.returncode, obj

    def test_try_prints_actions(self):
        srv = self.conf_only(COUNTER)
        rc, obj = self.run_try(srv)
        self.assertEqual(rc, 0, obj)
        self.assertEqual(obj.get("event"), "messages.upsert")
        self.assertEqual(obj.get("contact"), DEFAULT_PHONE)
        self.assertNotIn("error", obj)
        acts = obj["outcome"]["actions"]
        self.assertEqual(len(acts), 1, acts)
        self.assertEqual(acts[0].get("type"), "send_text")
        self.assertEqual(acts[0].get("to"), DEFAULT_PHONE)
        self.assertEqual(acts[0].get("text"), "hola María López n=nil")
        self.assertEqual(obj["outcome"]["state"], {"change": "set", "value": {"n": 1}})
        self.assertEqual(obj.get("msg", {}).get("push_name"), "María López",
                         "the normalised view is shown")
        self.assertFalse(os.path.exists(srv.db_path), "try does not create or touch the store")

    def test_try_state_option(self):
        srv = self.conf_only(COUNTER)
        rc, obj = self.run_try(srv, ["--state", '{"n":1}'])
        self.assertEqual(rc, 0, obj)
        self.assertEqual(obj["outcome"]["actions"][0].get("text"), "hola María López n=1")
        self.assertEqual(obj["outcome"]["state"]["value"], {"n": 2})

    def test_try_error_has_traceback(self):
        srv = self.conf_only(THROWS)
        rc, obj = self.run_try(srv)
        self.assertEqual(rc, 1, obj)
        err = obj.get("error") or ""
        self.assertIn("kaput now", err)
        self.assertRegex(err, r"main\.lua:\d+:")
        self.assertIn("traceback", err.lower(), err)
        self.assertNotIn("outcome", obj, "a failed run shows no actions")

    def test_check_reports_syntax_error_with_line(self):
        srv = self.conf_only(SYNTAX)
        p = srv.cli(["check"])
        out = ph.out_text(p)
        self.assertEqual(p.returncode, 1, out)
        self.assertRegex(out, r"main\.lua:4:", "file:line of the syntax error: %r" % out)

    def test_check_ok(self):
        srv = self.conf_only(COUNTER)
        p = srv.cli(["check"])
        self.assertEqual(p.returncode, 0, ph.out_text(p))


FAIL_ON_TEXT = handlers("""
h["messages.upsert"] = function(ev)
  if ev.msg.text:find("fail", 1, true) then error("boom") end
  wahook.send_text(ev.msg.phone, "ok " .. ev.msg.text)
end
""")
FIXED = handlers("""
h["messages.upsert"] = function(ev)
  wahook.send_text(ev.msg.phone, "fixed " .. ev.msg.text)
end
""")


class EventsShowRetry(harness.WahookTestCase):
    def test_show_dead_then_retry_after_fix(self):
        srv = script_server(self, FAIL_ON_TEXT, top="""
wahook.processors: 2
wahook.processing.max-attempts: 2
wahook.processing.retry-base: 50ms
wahook.processing.retry-max: 100ms
wahook.scripts.reload-debounce: 100ms
""")
        bad = post(self, srv, text_body("EV-FAIL-1", text="please fail"))
        ph.wait_status(srv, [bad], ("dead",))

        p = srv.cli(["events", "show", str(bad)])
        self.assertEqual(p.returncode, 0, ph.out_text(p))
        shown = json.loads(p.stdout.decode("utf-8"))
        self.assertEqual(shown["id"], bad)
        self.assertEqual(shown["status"], "dead")
        self.assertEqual(shown["attempts"], 2)
        self.assertIn("boom", shown["last_error"])
        self.assertRegex(shown["last_error"], r"main\.lua:\d+:")
        p = srv.cli(["events", "show", "999999"])
        self.assertNotEqual(p.returncode, 0, "show of an unknown id fails")

        ph.write_main(srv, FIXED)
        p = srv.cli(["reload"])
        self.assertEqual(p.returncode, 0, ph.out_text(p))
        # A reload alone does not resurrect dead events (barrier: a later event is done).
        probe = post(self, srv, text_body("EV-PROBE-1", text="probe"))
        ph.wait_status(srv, [probe], ("done",))
        self.assertEqual(ph.outbox_texts(srv, probe), ["fixed probe"])
        self.assertEqual(srv.event(bad)["status"], "dead")

        p = srv.cli(["events", "retry", str(bad)])
        self.assertEqual(p.returncode, 0, ph.out_text(p))
        self.assertEqual(json.loads(p.stdout.decode("utf-8")).get("status"), "pending")
        ph.wait_status(srv, [bad], ("done",), what="the retried event done with the fixed script")
        self.assertEqual(ph.outbox_texts(srv, bad), ["fixed please fail"])

        p = srv.cli(["events", "retry", str(bad)])
        self.assertNotEqual(p.returncode, 0, "retrying a done event is refused: %s" %
                            ph.out_text(p))
        self.assertEqual(ph.outbox_texts(srv, bad), ["fixed please fail"], "and runs nothing")


class Sandbox(harness.WahookTestCase):
    def test_require_outside_scripts_fails_check(self):
        srv = script_server(self, 'local x = require "../etc"\nreturn {}\n', start=False)
        p = srv.cli(["check"])
        out = ph.out_text(p)
        self.assertEqual(p.returncode, 1, out)
        self.assertIn("../etc", out, "the message names the module")
        self.assertRegex(out, r"main\.lua:1\b", "and where it was required")

    def test_require_symlink_escape_fails_check(self):
        srv = script_server(self, 'local x = require "evil"\nreturn {}\n', start=False)
        outside = os.path.join(srv.tmp, "outside.lua")
        with open(outside, "w") as f:
            f.write("return {}\n")
        os.symlink(outside, os.path.join(ph.scripts_dir(srv), "evil.lua"))
        p = srv.cli(["check"])
        out = ph.out_text(p)
        self.assertEqual(p.returncode, 1, out)
        self.assertIn("evil", out)
        self.assertRegex(out, r"main\.lua:1\b")

    def test_no_io_in_handlers(self):
        main = handlers("""
h["messages.upsert"] = function(ev)
  local exposed = {}
  local function chk(name, v) if v ~= nil then exposed[#exposed + 1] = name end end
  chk("io", io)
  chk("os.getenv", os.getenv)
  chk("os.exit", os.exit)
  chk("os.remove", os.remove)
  chk("os.execute", os.execute)
  chk("debug", debug)
  chk("package.loadlib", package and package.loadlib)
  chk("dofile", dofile)
  chk("loadfile", loadfile)
  chk("string.dump", string.dump)
  chk("binary load", (load("\\27LuaT\\0\\25\\147\\r\\n\\26\\n")))
  if io == nil and os.getenv == nil then
    wahook.send_text(ev.msg.phone, "sandboxed:" .. table.concat(exposed, ","))
  else
    wahook.send_text(ev.msg.phone, "OPEN:" .. table.concat(exposed, ","))
  end
end
""")
        srv = script_server(self, main, top="wahook.processors: 1")
        eid = post(self, srv, text_body("SANDBOX-1", text="x"))
        ph.wait_status(srv, [eid], ("done",))
        self.assertEqual(ph.outbox_texts(srv, eid), ["sandboxed:"])


if __name__ == "__main__":
    harness.main()
