"""End-to-end test of the dashboard in headless Chromium (issue 6 "Tests"): a real server, a real
browser (Debian's /usr/bin/chromium driven by playwright-core from tests/integration/e2e/), and
the walk an operator does — log in, watch a webhook arrive in the live feed, see the QR code after
a qrcode.updated, retry a dead letter, run the playground. Nothing is skipped: a missing Chromium,
Node or playwright-core fails the test with the line that installs it."""

import json
import os
import shutil
import subprocess
import tempfile

import harness
import proc_helpers as ph

E2E_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e")
CHROMIUM = os.environ.get("WH_CHROMIUM", "/usr/bin/chromium")
ADMIN_TOKEN = "admintok"

# The dead letter fails its first run only: the retry from the dashboard then succeeds. A
# module-level table lives as long as the processor's VM (one contact, one processor).
MAIN_LUA = ph.handlers("""
local failed_once = {}
h["messages.upsert"] = function(ev)
  local text = ev.msg and ev.msg.text or ""
  if text == "fail once" and not failed_once[ev.msg.id] then
    failed_once[ev.msg.id] = true
    error("fails once on purpose")
  end
  local st = wahook.state.get() or {}
  wahook.send_text(ev.msg.phone, "hola " .. tostring(st.n or 0))
end
""")


def missing_tools():
    problems = []
    if not os.access(CHROMIUM, os.X_OK):
        problems.append("Chromium not found at %s: apt-get install -y chromium" % CHROMIUM)
    if shutil.which("node") is None:
        problems.append("node not found: apt-get install -y nodejs")
    if not os.path.isdir(os.path.join(E2E_DIR, "node_modules", "playwright-core")):
        problems.append("playwright-core not installed: npm ci --prefix %s" % E2E_DIR)
    return problems


class DashboardE2E(harness.WahookTestCase):
    def test_dashboard_in_chromium(self):
        problems = missing_tools()
        self.assertEqual(problems, [], "the end-to-end test needs its tools:\n  " +
                         "\n  ".join(problems))
        srv = ph.script_server(self, MAIN_LUA, top="wahook.processing.max-attempts: 1\n")
        # The dead letter exists before the browser opens.
        dead = ph.post(self, srv, ph.text_body("E2E-DEAD", text="fail once",
                                               phone="34600888009"))
        ph.wait_status(srv, [dead], ("dead",))
        artifacts = tempfile.mkdtemp(prefix="wahook-e2e-")
        env = dict(os.environ)
        env.update({
            "DASH_URL": "http://127.0.0.1:%d/dashboard/" % srv.admin_port,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "WEBHOOK_URL": "http://127.0.0.1:%d%s" % (srv.port, harness.WEBHOOK_PATH),
            "WEBHOOK_TOKEN": ph.TOKEN,
            "DEAD_EVENT_ID": str(dead),
            "FIXTURES_DIR": harness.EVOLUTION_DIR,
            "ARTIFACTS_DIR": artifacts,
            "CHROMIUM": CHROMIUM,
        })
        try:
            p = subprocess.run(["node", os.path.join(E2E_DIR, "dashboard.e2e.js")], env=env,
                               cwd=E2E_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=240)
        except subprocess.TimeoutExpired as e:
            self.fail("the browser walk did not finish in 240 s (artifacts in %s)\n%s" %
                      (artifacts, (e.stdout or b"").decode("utf-8", "replace")))
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, "browser walk failed (screenshots in %s):\n%s\n%s" %
                         (artifacts, out, err[-4000:]))
        steps = [json.loads(line)["step"] for line in out.splitlines() if line.startswith("{")]
        self.assertEqual(steps, ["login", "feed", "filter", "qr", "retry", "playground", "done"])

        # What the browser did is what the store says.
        ev = srv.event(dead)
        self.assertEqual(ev["status"], "done", "the retried dead letter ran again: %r" % ev)
        # The playground's dry run stored nothing: the events are the test's own posts.
        events = srv.events()
        self.assertFalse([e for e in events if e["dedup_id"] == "A5F3C8E1B2D4967F0E1A2B3C4D5E6F70"],
                         "the playground's example was not ingested")
        shutil.rmtree(artifacts, ignore_errors=True)


if __name__ == "__main__":
    harness.main()
