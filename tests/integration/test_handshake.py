"""The GET verification handshake (hub.mode / hub.verify_token / hub.challenge), off unless a
verify token is configured, and the token kept out of the logs (DESIGN.md rule 6)."""

import os

import harness
from harness import WEBHOOK_PATH, make_conf, upsert

VERIFY = "vt-SECRET-7f3a9c"
WRONG = "wrong-SECRET-91c2d4"
TOKEN = "hdr-SECRET-5e6f70"


def hs(mode="subscribe", token=VERIFY, challenge="1158201444"):
    return "%s?hub.mode=%s&hub.verify_token=%s&hub.challenge=%s" % (WEBHOOK_PATH, mode, token,
                                                                    challenge)


class Handshake(harness.WahookTestCase):
    def make(self):
        return self.new_server(make_conf("""
auth:
  token: {secrets: [%s]}
verify-token: %s
""" % (TOKEN, VERIFY), top="access-log: @TMP@/access.log"))

    def test_handshake_replies(self):
        srv = self.make()
        r = srv.get(hs())
        self.assertReply(r, 200, srv, "correct verify token")
        self.assertEqual(r.body, b"1158201444", "the body is exactly the challenge")
        self.assertEqual((r.header("content-type") or "").split(";")[0].strip(), "text/plain")

        r = srv.get(hs(challenge="challenge-Abc_123"))
        self.assertReply(r, 200, srv)
        self.assertEqual(r.body, b"challenge-Abc_123")

        r = srv.get(hs(token=WRONG))
        self.assertReply(r, 403, srv, "wrong verify token")
        self.assertNotIn(b"1158201444", r.body, "a refused handshake does not echo the challenge")

        r = srv.get(hs(token=VERIFY[:-1]))
        self.assertReply(r, 403, srv, "a prefix of the verify token")

        r = srv.get(hs(mode="other"))
        self.assertReply(r, 403, srv, "hub.mode=other")
        self.assertNotIn(b"1158201444", r.body)

        r = srv.get("%s?hub.mode=subscribe&hub.challenge=5" % WEBHOOK_PATH)
        self.assertReply(r, 403, srv, "no verify token in the query")

        # POST keeps working on a route with a verify token
        self.assertAccepted(srv.post(upsert("HS-1"), {"x-webhook-token": TOKEN}), srv)

    def test_verify_token_not_logged(self):
        srv = self.make()
        self.assertReply(srv.get(hs()), 200, srv)
        self.assertReply(srv.get(hs(token=WRONG)), 403, srv)
        self.assertReply(srv.get(hs(mode="other")), 403, srv)
        self.assertAccepted(srv.post(upsert("HS-2"), {"x-webhook-token": TOKEN}), srv)
        self.assertError(srv.post(upsert("HS-3"), {"x-webhook-token": WRONG}), 401,
                         "invalid signature", srv)
        rc = srv.stop()  # flush the logs
        self.assertEqual(rc, 0, srv.tail())
        access_path = os.path.join(srv.tmp, "access.log")
        self.assertTrue(os.path.exists(access_path), "access-log file must be written")
        with open(access_path, "rb") as f:
            access = f.read().decode("utf-8", "replace")
        self.assertIn(WEBHOOK_PATH, access, "the access log records the requests")
        self.assertGreaterEqual(access.count(WEBHOOK_PATH), 5, "one line per request:\n" + access)
        stderr = srv.stderr()
        for name, text in (("access log", access), ("stderr", stderr)):
            for secret in (VERIFY, WRONG, TOKEN):
                self.assertNotIn(secret, text, "%s must not contain %r:\n%s" %
                                 (name, secret, text[-2000:]))


class HandshakeOff(harness.WahookTestCase):
    def test_no_verify_token_means_405(self):
        srv = self.new_server(make_conf("auth:\n  token: {secrets: [%s]}\n" % TOKEN))
        r = srv.get(hs())
        self.assertError(r, 405, "method not allowed", srv, "handshake is off by default")
        self.assertNotIn(b"1158201444", r.body)
        self.assertIn("POST", r.header("allow", ""))


if __name__ == "__main__":
    harness.main()
