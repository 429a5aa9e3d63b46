"""Authentication modes (DESIGN.md "Inbound authentication"): secret rotation per method, the body
apikey, development mode, ${VAR} secrets, and the refusal to serve production without auth."""

import itertools
import json
import re
import time

import harness
from harness import compact, make_conf, make_jwt, run_wahook, sign, upsert

_ids = itertools.count(1)
NO_AUTH_ROUTE = "allow: [127.0.0.0/8]\n"


def new_id():
    return "AM%010d%08X" % (next(_ids), int(time.time() * 1000) & 0xFFFFFFFF)


def with_apikey(value, drop=False):
    obj = json.loads(upsert(new_id()))
    if drop:
        obj.pop("apikey", None)
    else:
        obj["apikey"] = value
    return compact(obj)


class Rotation(harness.WahookTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.start_class_server(make_conf("""
auth:
  hmac:  {secrets: [h-old-1111, h-new-2222]}
  token: {secrets: [t-old-3333, t-new-4444]}
  jwt:   {secrets: [j-old-5555, j-new-6666]}
"""))

    def test_hmac_rotation(self):
        for s in ("h-old-1111", "h-new-2222"):
            raw = upsert(new_id())
            self.assertAccepted(self.srv.post(raw, {"x-webhook-signature": sign(s, raw)}),
                                self.srv, "hmac secret %s" % s)
        raw = upsert(new_id())
        self.assertError(self.srv.post(raw, {"x-webhook-signature": sign("h-third-9999", raw)}),
                         401, "invalid signature", self.srv, "a third hmac secret")

    def test_token_rotation(self):
        for s in ("t-old-3333", "t-new-4444"):
            self.assertAccepted(self.srv.post(upsert(new_id()), {"x-webhook-token": s}),
                                self.srv, "token %s" % s)
        self.assertError(self.srv.post(upsert(new_id()), {"x-webhook-token": "t-third-9999"}),
                         401, "invalid signature", self.srv, "a third token")

    def test_jwt_rotation(self):
        for s in ("j-old-5555", "j-new-6666"):
            self.assertAccepted(self.srv.post(upsert(new_id()),
                                              {"Authorization": "Bearer " + make_jwt(s)}),
                                self.srv, "jwt key %s" % s)
        self.assertError(self.srv.post(upsert(new_id()),
                                       {"Authorization": "Bearer " + make_jwt("j-third-9999")}),
                         401, "invalid signature", self.srv, "a third jwt key")

    def test_reply_never_says_which_secret(self):
        r1 = self.srv.post(upsert(new_id()), {"x-webhook-token": "nope"})
        r2 = self.srv.post(upsert(new_id()), {"Authorization": "Bearer " + make_jwt("nope")})
        self.assertEqual(r1.json(), {"error": "invalid signature"})
        self.assertEqual(r2.json(), {"error": "invalid signature"})


class Methods(harness.WahookTestCase):
    def test_unconfigured_method_credentials_ignored(self):
        srv = self.new_server(make_conf("auth:\n  hmac: {secrets: [only-hmac]}\n"))
        raw = upsert(new_id())
        r = srv.post(raw, {"x-webhook-signature": sign("only-hmac", raw),
                           "x-webhook-token": "garbage",
                           "Authorization": "Bearer not.a.jwt"})
        self.assertAccepted(r, srv, "token and jwt are not configured: their headers are ignored")
        raw = upsert(new_id())
        self.assertError(srv.post(raw, {"x-webhook-token": "garbage"}), 401,
                         "invalid signature", srv, "an ignored credential does not authenticate")

    def test_custom_hmac_header_and_prefix(self):
        srv = self.new_server(make_conf(
            "auth:\n  hmac: {secrets: [meta-key], header: X-Hub-Signature-256, prefix: \"sha256=\"}\n"))
        raw = upsert(new_id())
        self.assertAccepted(srv.post(raw, {"X-Hub-Signature-256": sign("meta-key", raw)}), srv,
                            "Meta-style header name")
        raw = upsert(new_id())
        self.assertError(srv.post(raw, {"x-webhook-signature": sign("meta-key", raw)}), 401,
                         "invalid signature", srv, "the default header name is not configured")

    def test_apikey_method(self):
        srv = self.new_server(make_conf("auth:\n  apikey: {secrets: [inst-token-aa11, inst-token-bb22]}\n"))
        for s in ("inst-token-aa11", "inst-token-bb22"):
            eid = self.assertAccepted(srv.post(with_apikey(s)), srv, "body apikey %s" % s)
            body = srv.event(eid)["body"]
            body = body.decode() if isinstance(body, bytes) else body
            self.assertNotIn(s, body, "the matching apikey is redacted before storing")
        cases = (("wrong apikey", with_apikey("inst-token-wrong")),
                 ("\"Apikey not found\"", with_apikey("Apikey not found")),
                 ("null apikey", with_apikey(None)),
                 ("no apikey field", with_apikey(None, drop=True)),
                 ("apikey is a number", with_apikey(12345)))
        for what, raw in cases:
            self.assertError(srv.post(raw), 401, "invalid signature", srv,
                             "%s in production with apikey as the only method" % what)
        self.assertEqual(len(srv.events()), 2)

    def test_apikey_with_header_methods(self):
        srv = self.new_server(make_conf("""
auth:
  token:  {secrets: [tok-mix]}
  apikey: {secrets: [inst-mix]}
"""))
        self.assertAccepted(srv.post(with_apikey(None), {"x-webhook-token": "tok-mix"}), srv,
                            "token passes; apikey null counts as absent")
        self.assertAccepted(srv.post(with_apikey("inst-mix")), srv,
                            "no header credentials: decided by the body apikey")
        self.assertError(srv.post(with_apikey("inst-mix"), {"x-webhook-token": "bad"}), 401,
                         "invalid signature", srv, "wrong token fails even with a good apikey")
        self.assertError(srv.post(with_apikey("bad"), {"x-webhook-token": "tok-mix"}), 401,
                         "invalid signature", srv, "wrong apikey fails even with a good token")

    def test_secrets_from_env_and_env_file(self):
        srv = self.new_server(
            make_conf("""
auth:
  hmac:  {secrets: ["${WEBHOOK_SECRET}"]}
  token: {secrets: ["${TOKEN_FROM_FILE}"]}
"""),
            env={"WEBHOOK_SECRET": "from-env-5150"},
            env_file="# comment\nWEBHOOK_SECRET=from-file-0000\nexport TOKEN_FROM_FILE=\"file-tok-42\"\n")
        raw = upsert(new_id())
        self.assertAccepted(srv.post(raw, {"x-webhook-signature": sign("from-env-5150", raw)}),
                            srv, "the environment wins over the env file")
        raw = upsert(new_id())
        self.assertError(srv.post(raw, {"x-webhook-signature": sign("from-file-0000", raw)}),
                         401, "invalid signature", srv, "the env file does not override the env")
        self.assertAccepted(srv.post(upsert(new_id()), {"x-webhook-token": "file-tok-42"}), srv,
                            "a variable only in the env file (export, quotes)")
        log = srv.stderr()
        for s in ("from-env-5150", "from-file-0000", "file-tok-42"):
            self.assertNotIn(s, log, "secrets never appear in the log")


class Development(harness.WahookTestCase):
    def test_development_without_secrets_accepts_unauthenticated(self):
        srv = self.new_server(make_conf(NO_AUTH_ROUTE, env_mode="development"))
        self.assertAccepted(srv.post(upsert(new_id())), srv, "development, no auth configured")
        self.assertAccepted(srv.post(upsert(new_id()), {"x-webhook-token": "anything"}), srv,
                            "credentials of unconfigured methods are ignored")

    def test_development_from_env_variable(self):
        srv = self.new_server(make_conf(NO_AUTH_ROUTE, env_mode=None),
                              env={"WAHOOK_ENV": "development"})
        self.assertAccepted(srv.post(upsert(new_id())), srv, "WAHOOK_ENV=development")

    def test_development_rejects_wrong_credentials(self):
        srv = self.new_server(make_conf("""
auth:
  token:  {secrets: [dev-tok]}
  apikey: {secrets: [dev-inst]}
""", env_mode="development"))
        self.assertAccepted(srv.post(with_apikey(None)), srv, "no credentials in development")
        self.assertAccepted(srv.post(with_apikey("Apikey not found")), srv,
                            "\"Apikey not found\" is absent, not wrong")
        self.assertAccepted(srv.post(with_apikey(None), {"x-webhook-token": "dev-tok"}), srv,
                            "right token")
        self.assertError(srv.post(with_apikey(None), {"x-webhook-token": "wrong"}), 401,
                         "invalid signature", srv, "wrong token is refused even in development")
        self.assertError(srv.post(with_apikey("wrong-inst")), 401, "invalid signature", srv,
                         "wrong apikey is refused even in development")



class ConfigErrors(harness.WahookTestCase):
    def _conf_server(self, text, **kw):
        return self.new_server(text, start=False, **kw)

    def test_serve_refuses_production_without_auth(self):
        srv = self._conf_server(make_conf(NO_AUTH_ROUTE))
        p = srv.spawn()
        try:
            rc = p.wait(10)
        except harness.subprocess.TimeoutExpired:
            srv.kill()
            self.fail("wahook serve kept running in production with no auth method\n" + srv.tail())
        self.assertGreater(rc, 0, "serve must exit with an error status (not a signal)\n" +
                           srv.tail())
        self.assertRegex(srv.stderr(), re.compile("auth", re.I),
                         "stderr must say that authentication is missing")
        try:
            r = harness.request(srv.port, "GET", "/healthz", timeout=1)
            self.fail("nothing may listen after a refused start: %r" % r)
        except OSError:
            pass

    def test_serve_defaults_to_production(self):
        srv = self._conf_server(make_conf(NO_AUTH_ROUTE, env_mode=None))
        p = srv.spawn()
        try:
            rc = p.wait(10)
        except harness.subprocess.TimeoutExpired:
            srv.kill()
            self.fail("with no wahook.env and no WAHOOK_ENV the mode must be production\n" +
                      srv.tail())
        self.assertGreater(rc, 0)

    def test_check_reports_production_without_auth(self):
        srv = self._conf_server(make_conf(NO_AUTH_ROUTE))
        p = srv.cli(["check"])
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertEqual(p.returncode, 1, "check exits 1 on an invalid config: %s" % out)
        self.assertRegex(out, re.escape(srv.conf_path) + r":\d+",
                         "errors name file:line")
        self.assertRegex(out, re.compile("auth", re.I))

    def test_check_unknown_directive_position(self):
        text = make_conf("auth:\n  token: {secrets: [t]}\n")
        lines = text.split("\n")
        at = lines.index("num-threads: 2")
        lines.insert(at + 1, "wahook.no-such-directive: 1")
        srv = self._conf_server("\n".join(lines))
        p = srv.cli(["check"])
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertEqual(p.returncode, 1, out)
        m = re.search(re.escape(srv.conf_path) + r":(\d+):(\d+)", out)
        self.assertIsNotNone(m, "check must print file:line:col, got: %s" % out)
        self.assertEqual(int(m.group(1)), at + 2, "line of the unknown directive (1-based)")
        self.assertGreaterEqual(int(m.group(2)), 1)
        self.assertIn("wahook.no-such-directive", out, "the message names the directive")

    def test_check_unknown_key_inside_webhook(self):
        text = make_conf("auth:\n  token: {secrets: [t]}\nrate-limt: {ip-per-minute: 5}\n")
        srv = self._conf_server(text)
        line = text.split("\n").index("          rate-limt: {ip-per-minute: 5}") + 1
        p = srv.cli(["check"])
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        self.assertEqual(p.returncode, 1, out)
        self.assertRegex(out, re.escape(srv.conf_path) + r":%d:\d+" % line,
                         "a typo inside wahook.webhook is reported at its line")

    def test_check_valid_config(self):
        srv = self._conf_server(make_conf("auth:\n  token: {secrets: [\"${WEBHOOK_SECRET}\"]}\n"),
                                env_file="WEBHOOK_SECRET=Zq9-secret-Xy\n")
        p = srv.cli(["check"])
        self.assertEqual(p.returncode, 0, (p.stdout + p.stderr).decode("utf-8", "replace"))
        self.assertNotIn(b"Zq9-secret-Xy", p.stdout + p.stderr, "check never prints secrets")

    def test_check_missing_file(self):
        p = run_wahook(["check", "-c", "/nonexistent/wahook.conf", "--env-file", "/dev/null"])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(b"/nonexistent/wahook.conf", p.stdout + p.stderr)


if __name__ == "__main__":
    harness.main()
