"""Every row of the reply table in DESIGN.md "Replies over HTTP", against the real server, with
the stored row checked in SQLite where a 200 is expected."""

import base64
import hashlib
import http.client
import itertools
import json
import time

import harness
from harness import (FIXTURE_APIKEY, WEBHOOK_PATH, compact, fixture, make_conf, make_jwt,
                     raw_request, request_head, sign, upsert)

HMAC_SECRET = "s1-hmac-3f9a"
TOKEN_SECRET = "t1-token-77c2"
JWT_SECRET = "j1-jwt-a81e"

# hmac + token + jwt, default jwt leeway (30 min), IP limit high enough for all the 4xx below.
MAIN_ROUTE = """
auth:
  hmac:  {secrets: [%s], header: x-webhook-signature, prefix: "sha256="}
  token: {secrets: [%s], header: x-webhook-token}
  jwt:   {secrets: [%s]}
rate-limit: {ip-per-minute: 100000, instance-per-minute: 600000, instance-burst: 100000}
""" % (HMAC_SECRET, TOKEN_SECRET, JWT_SECRET)

_ids = itertools.count(1)


def new_id(tag="R"):
    return "%s%012d%08X" % (tag, next(_ids), int(time.time() * 1000) & 0xFFFFFFFF)


def signed(body):
    return {"x-webhook-signature": sign(HMAC_SECRET, body)}


class Replies(harness.WahookTestCase):
    """One shared server (production, hmac+token+jwt) for the rows that need no special config."""

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.start_class_server(make_conf(MAIN_ROUTE))

    def post(self, body, headers=None, **kw):
        return self.srv.post(body, headers, **kw)

    def count(self):
        return self.srv.query("SELECT count(*) AS n FROM events")[0]["n"]

    # ---- 200 accepted / duplicate

    def test_accepted_row_is_stored_redacted(self):
        raw = compact(fixture("messages-upsert-text"))
        r = self.post(raw, signed(raw))
        eid = self.assertAccepted(r, self.srv, "text fixture")
        row = self.srv.event(eid)
        self.assertIsNotNone(row, "accepted id %d must be in the events table" % eid)
        self.assertEqual(row["instance"], "acme-bot")
        self.assertEqual(row["event"], "messages.upsert")
        self.assertEqual(row["dedup_id"], "A5F3C8E1B2D4967F0E1A2B3C4D5E6F70",
                         "messages.upsert dedup id is data.key.id")
        self.assertEqual(row["contact_key"], "34600111222", "contact key of a PN DM is the phone")
        self.assertTrue(row["status"], "a stored event has a status")
        body = row["body"]
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        self.assertNotIn(FIXTURE_APIKEY, body, "the apikey value must not be stored")
        stored = json.loads(body)
        self.assertEqual(stored["event"], "messages.upsert")
        self.assertEqual(stored["data"], fixture("messages-upsert-text")["data"],
                         "redaction must leave data untouched (incl. raw UTF-8 text)")

    def test_duplicate_same_id_one_row(self):
        mid = new_id()
        raw = upsert(mid)
        first = self.assertAccepted(self.post(raw, signed(raw)), self.srv)
        again = self.assertDuplicate(self.post(raw, signed(raw)), self.srv, "same body again")
        self.assertEqual(again, first, "a duplicate answers the id of the stored event")
        # Evolution's instance+global double delivery: same event, different envelope bytes
        obj = json.loads(raw)
        obj["destination"] = "https://other.example.com/global/messages-upsert"
        raw2 = compact(obj)
        third = self.assertDuplicate(self.post(raw2, signed(raw2)), self.srv,
                                     "same key.id, different envelope")
        self.assertEqual(third, first)
        rows = self.srv.query("SELECT id FROM events WHERE dedup_id = ?", (mid,))
        self.assertEqual([x["id"] for x in rows], [first], "exactly one row for the message")

    def test_lid_message_contact_key_and_alias(self):
        raw = compact(fixture("messages-upsert-lid"))
        eid = self.assertAccepted(self.post(raw, signed(raw)), self.srv)
        row = self.srv.event(eid)
        self.assertEqual(row["dedup_id"], "E1F2A3B4C5D6E7F8A9B0C1D2E3F4A5B6")
        self.assertEqual(row["contact_key"], "34600111222",
                         "a LID DM with the phone in remoteJidAlt is keyed by the phone")
        aliases = self.srv.query("SELECT instance, lid, phone FROM contact_aliases")
        self.assertTrue(any(a["instance"] == "acme-bot" and "207581245931618" in a["lid"] and
                            a["phone"] == "34600111222" for a in aliases),
                        "the LID<->phone alias must be learned: %r" % aliases)

    def test_messages_update_dedup_is_keyid_and_status(self):
        raw = compact(fixture("messages-update-read"))
        eid = self.assertAccepted(self.post(raw, signed(raw)), self.srv)
        row = self.srv.event(eid)
        self.assertEqual(row["event"], "messages.update")
        self.assertEqual(row["dedup_id"], "3EB07F3A9C1D2E4B5A6F70:READ")

    def test_other_events_dedup_on_body_hash(self):
        raw = compact(fixture("connection-update-open"))
        eid = self.assertAccepted(self.post(raw, signed(raw)), self.srv)
        row = self.srv.event(eid)
        self.assertEqual(row["event"], "connection.update")
        self.assertEqual(row["dedup_id"], "sha256:" + hashlib.sha256(raw).hexdigest())
        self.assertIsNone(row["contact_key"], "connection.update has no contact")
        self.assertNotIn(FIXTURE_APIKEY, row["body"] if isinstance(row["body"], str)
                         else row["body"].decode())

    def test_base64_media_replaced(self):
        obj = fixture("messages-upsert-image-base64")
        b64 = obj["data"]["message"]["base64"]
        raw = compact(obj)
        eid = self.assertAccepted(self.post(raw, signed(raw)), self.srv)
        body = self.srv.event(eid)["body"]
        body = body.decode() if isinstance(body, bytes) else body
        self.assertNotIn(b64, body, "data.message.base64 must not be stored by default")
        self.assertNotIn(b64[:64], body, "not even a prefix of the base64 text")
        digests = {hashlib.sha256(base64.b64decode(b64)).hexdigest(),
                   hashlib.sha256(b64.encode()).hexdigest()}
        self.assertTrue(any(d in body for d in digests),
                        "the replacement carries the media's SHA-256: %s" % body[:400])
        stored = json.loads(body)
        self.assertEqual(stored["data"]["message"]["imageMessage"],
                         obj["data"]["message"]["imageMessage"], "the rest of the message is kept")
        self.assertNotIn(FIXTURE_APIKEY, body)

    def test_apikey_redacted_at_any_depth(self):
        mid = new_id()
        obj = json.loads(upsert(mid))
        obj["data"]["extra"] = {"nested": [{"apikey": "NESTED-SECRET-1"}],
                                "api_key": "NESTED-SECRET-2"}
        raw = compact(obj)
        eid = self.assertAccepted(self.post(raw, signed(raw)), self.srv)
        body = self.srv.event(eid)["body"]
        body = body.decode() if isinstance(body, bytes) else body
        for secret in (FIXTURE_APIKEY, "NESTED-SECRET-1", "NESTED-SECRET-2"):
            self.assertNotIn(secret, body, "apikey/api_key must be redacted at any depth")
        json.loads(body)

    # ---- 400

    def _bad_body(self, raw, message, what):
        before = self.count()
        r = self.post(raw, signed(raw))
        self.assertError(r, 400, message, self.srv, what)
        self.assertEqual(self.count(), before, "%s: nothing may be stored" % what)

    def test_400_malformed_json(self):
        self._bad_body(b'{"event":"messages.upsert","instance":', "malformed JSON", "truncated")

    def test_400_json_array(self):
        self._bad_body(b'[{"event":"messages.upsert"}]', "body is not a JSON object", "array")

    def test_400_missing_event(self):
        self._bad_body(b'{"instance":"acme-bot","data":{}}', "missing event", "no event")

    def test_400_event_not_a_string(self):
        self._bad_body(b'{"event":42,"instance":"acme-bot","data":{}}', None, "event is a number")
        self._bad_body(b'{"event":null,"instance":"acme-bot"}', None, "event is null")

    def test_400_empty_body(self):
        self._bad_body(b"", None, "empty body")

    # ---- by-events suffixes: the event name always comes from the body

    def _suffix(self, path, event, msg):
        mid = new_id()
        obj = json.loads(upsert(mid))
        obj["event"] = event
        raw = compact(obj)
        eid = self.assertAccepted(self.post(raw, signed(raw), path=path), self.srv, msg)
        self.assertEqual(self.srv.event(eid)["event"], event, msg)

    def test_by_events_known_suffix(self):
        self._suffix(WEBHOOK_PATH + "/messages-upsert", "messages.upsert", "known suffix")

    def test_by_events_unknown_suffix(self):
        self._suffix(WEBHOOK_PATH + "/some-future-event", "some.future.event", "future event")

    def test_by_events_double_slash(self):
        self._suffix(WEBHOOK_PATH + "//messages-upsert", "messages.upsert",
                     "trailing slash in the configured URL gives //")

    def test_by_events_suffix_disagrees_with_body(self):
        self._suffix(WEBHOOK_PATH + "/connection-update", "messages.upsert", "suffix disagrees")

    # ---- 401

    def _unauth(self, body, headers, what):
        before = self.count()
        r = self.post(body, headers)
        self.assertError(r, 401, "invalid signature", self.srv, what)
        self.assertEqual(self.count(), before, "%s: nothing may be stored" % what)

    def test_401_wrong_hmac(self):
        raw = upsert(new_id())
        self._unauth(raw, {"x-webhook-signature": sign("not-the-secret", raw)}, "wrong HMAC")
        self._unauth(raw, {"x-webhook-signature": sign(HMAC_SECRET, raw + b" ")},
                     "HMAC of another body")
        self._unauth(raw, {"x-webhook-signature": sign(HMAC_SECRET, raw)[len("sha256="):]},
                     "HMAC without the prefix")
        self._unauth(raw, {"x-webhook-signature": "sha256=zz"}, "garbage HMAC")

    def test_401_wrong_token(self):
        raw = upsert(new_id())
        self._unauth(raw, {"x-webhook-token": "wrong-token"}, "wrong token")
        self._unauth(raw, {"x-webhook-token": TOKEN_SECRET + "x"}, "token with a suffix")
        self._unauth(raw, {"x-webhook-token": TOKEN_SECRET[:-1]}, "token prefix")

    def test_401_tampered_jwt(self):
        raw = upsert(new_id())
        tok = make_jwt(JWT_SECRET)
        h, p, s = tok.split(".")
        forged_payload = harness.b64url(compact({"iat": int(time.time()), "app": "evolution",
                                                 "action": "webhook",
                                                 "exp": int(time.time()) + 10 ** 6}))
        self._unauth(raw, {"Authorization": "Bearer %s.%s.%s" % (h, forged_payload, s)},
                     "payload changed, signature kept")
        flipped = s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1]
        self._unauth(raw, {"Authorization": "Bearer %s.%s.%s" % (h, p, flipped)},
                     "signature changed")
        self._unauth(raw, {"Authorization": "Bearer " + make_jwt("other-secret")},
                     "signed with another key")
        none_hdr = harness.b64url(compact({"alg": "none", "typ": "JWT"}))
        self._unauth(raw, {"Authorization": "Bearer %s.%s." % (none_hdr, p)}, "alg none")
        self._unauth(raw, {"Authorization": "Bearer " + make_jwt(JWT_SECRET, app="other")},
                     "wrong app claim")
        self._unauth(raw, {"Authorization": "Bearer " + make_jwt(JWT_SECRET, action="other")},
                     "wrong action claim")

    def test_401_jwt_expired_beyond_leeway(self):
        now = int(time.time())
        raw = upsert(new_id())
        tok = make_jwt(JWT_SECRET, iat=now - 7200 - 600, exp=now - 7200)
        self._unauth(raw, {"Authorization": "Bearer " + tok}, "exp 2 h ago, leeway 30 min")

    def test_jwt_expired_within_leeway_accepted(self):
        now = int(time.time())
        raw = upsert(new_id())
        tok = make_jwt(JWT_SECRET, iat=now - 1200, exp=now - 600)
        self.assertAccepted(self.post(raw, {"Authorization": "Bearer " + tok}), self.srv,
                            "exp 10 min ago is within the default 30 min leeway (late retry)")

    def test_single_methods_pass(self):
        for what, hdr in (("token", {"x-webhook-token": TOKEN_SECRET}),
                          ("jwt", {"Authorization": "Bearer " + make_jwt(JWT_SECRET)})):
            raw = upsert(new_id())
            self.assertAccepted(self.post(raw, hdr), self.srv, "%s alone passes" % what)

    def test_401_correct_token_wrong_hmac(self):
        raw = upsert(new_id())
        self._unauth(raw, {"x-webhook-token": TOKEN_SECRET,
                           "x-webhook-signature": sign("bad", raw)},
                     "a present and wrong credential fails even if another passes")
        self._unauth(raw, {"x-webhook-signature": sign(HMAC_SECRET, raw),
                           "Authorization": "Bearer " + make_jwt("bad")},
                     "right HMAC, wrong JWT")

    def test_401_missing_credentials_in_production(self):
        self._unauth(upsert(new_id()), {}, "no credentials at all")

    # ---- 404 / 405

    def test_404_other_path(self):
        raw = upsert(new_id())
        self.assertError(self.post(raw, signed(raw), path="/other"), 404, "not found", self.srv,
                         "POST /other")
        self.assertError(self.srv.get("/other"), 404, "not found", self.srv, "GET /other")

    def test_405_get_and_put_without_verify_token(self):
        r = self.srv.get(WEBHOOK_PATH)
        self.assertError(r, 405, "method not allowed", self.srv, "GET")
        self.assertIn("POST", r.header("allow", ""), "405 must say Allow: POST")
        r = self.srv.get(WEBHOOK_PATH + "?hub.mode=subscribe&hub.verify_token=x&hub.challenge=c")
        self.assertError(r, 405, "method not allowed", self.srv, "handshake with no verify-token")
        raw = upsert(new_id())
        r = self.srv.request("PUT", WEBHOOK_PATH, raw,
                             dict(signed(raw), **{"Content-Type": "application/json"}))
        self.assertError(r, 405, "method not allowed", self.srv, "PUT")
        self.assertIn("POST", r.header("allow", ""))

    # ---- 415

    def test_415_content_types(self):
        raw = upsert(new_id())
        r = self.post(raw, signed(raw), content_type="text/plain")
        self.assertError(r, 415, "unsupported media type", self.srv, "text/plain")
        r = self.post(raw, signed(raw), content_type=None)
        self.assertError(r, 415, "unsupported media type", self.srv, "no Content-Type")
        r = self.post(raw, signed(raw), content_type="application/x-www-form-urlencoded")
        self.assertError(r, 415, "unsupported media type", self.srv, "form")
        r = self.post(raw, signed(raw), content_type="application/json; charset=utf-8")
        self.assertAccepted(r, self.srv, "application/json with charset")


class ReplyLimits(harness.WahookTestCase):
    """Rows that need a config of their own: 403, 413, 429, 503."""

    def test_403_ip_not_allowed_and_xff_from_untrusted_peer_ignored(self):
        srv = self.new_server(make_conf("""
auth:
  token: {secrets: [tok-403]}
allow: [10.0.0.0/8]
"""))
        raw = upsert(new_id())
        h = {"x-webhook-token": "tok-403"}
        self.assertError(srv.post(raw, h), 403, "forbidden", srv, "127.0.0.1 is not in allow")
        self.assertError(srv.post(raw, dict(h, **{"X-Forwarded-For": "10.1.2.3"})), 403,
                         "forbidden", srv, "X-Forwarded-For from an untrusted peer is ignored")
        self.assertEqual(srv.events(), [], "nothing stored from a refused IP")

    def test_403_xff_believed_from_trusted_proxy(self):
        srv = self.new_server(make_conf("""
auth:
  token: {secrets: [tok-xff]}
allow: [203.0.113.0/24]
trusted-proxies: [127.0.0.1/32]
"""))
        h = {"x-webhook-token": "tok-xff"}
        raw = upsert(new_id())
        self.assertAccepted(srv.post(raw, dict(h, **{"X-Forwarded-For": "203.0.113.7"})), srv,
                            "XFF 203.0.113.7 via a trusted proxy is allowed")
        raw = upsert(new_id())
        self.assertError(srv.post(raw, dict(h, **{"X-Forwarded-For": "198.51.100.1"})), 403,
                         "forbidden", srv, "XFF 198.51.100.1 via a trusted proxy")
        self.assertError(srv.post(raw, h), 403, "forbidden", srv,
                         "no XFF: the proxy itself (127.0.0.1) is not allowed")
        # The client is the right-most address not added by a trusted proxy: a forged left-most
        # entry must not get a refused client in.
        self.assertError(srv.post(raw, dict(h, **{"X-Forwarded-For": "203.0.113.7, 198.51.100.1"})),
                         403, "forbidden", srv, "forged allowed address left of the real client")
        raw = upsert(new_id())
        self.assertAccepted(srv.post(raw, dict(h, **{"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})),
                            srv, "allowed client behind the proxy with a junk entry before it")

    def post_oversized(self, srv):
        big = upsert(new_id(), pad=100 * 1024)
        self.assertGreater(len(big), 100 * 1024)
        head = request_head("POST", WEBHOOK_PATH, {
            "Content-Type": "application/json", "Content-Length": str(len(big)),
            "x-webhook-signature": sign("k413", big)})
        parts = [big[i:i + 16384] for i in range(0, len(big), 16384)]
        return raw_request(srv.port, head, parts)

    def test_413_body_over_limit(self):
        srv = self.new_server(make_conf("auth:\n  hmac: {secrets: [k413]}\n", limit="64K"))
        small = upsert(new_id(), pad=50 * 1024)
        self.assertAccepted(srv.post(small, {"x-webhook-signature": sign("k413", small)}), srv,
                            "a 50 KB body is under a 64K limit")
        r = self.post_oversized(srv)
        self.assertReply(r, 413, srv, "100 KB over 64K")
        self.assertEqual(len(srv.events()), 1, "the oversized body is not stored")
        small = upsert(new_id())
        self.assertAccepted(srv.post(small, {"x-webhook-signature": sign("k413", small)}), srv,
                            "the server keeps serving after a 413")

    def test_429_ip_limit_counts_failures(self):
        srv = self.new_server(make_conf("""
auth:
  token: {secrets: [tok-ip]}
rate-limit: {ip-per-minute: 5}
"""))
        for i in range(5):
            raw = upsert(new_id())
            self.assertError(srv.post(raw, {"x-webhook-token": "wrong"}), 401, "invalid signature",
                             srv, "failing request %d of 5" % (i + 1))
        raw = upsert(new_id())
        r = srv.post(raw, {"x-webhook-token": "tok-ip"})
        self.assertError(r, 429, "rate limited", srv,
                         "6th request from an IP over its failure budget, even with a good token")
        self.assertRetryAfter(r, 1)
        self.assertEqual(srv.events(), [], "a rate-limited request is not stored")

    def test_authenticated_sender_not_throttled_by_ip_limit(self):
        srv = self.new_server(make_conf("""
auth:
  token: {secrets: [tok-ok]}
rate-limit: {ip-per-minute: 5}
"""))
        ids = []
        for i in range(50):
            raw = upsert(new_id())
            ids.append(self.assertAccepted(srv.post(raw, {"x-webhook-token": "tok-ok"}), srv,
                                           "good request %d of 50 (ip-per-minute 5)" % (i + 1)))
        self.assertEqual(len(set(ids)), 50)
        self.assertEqual(len(srv.events()), 50)

    def test_429_instance_limit(self):
        srv = self.new_server(make_conf("""
auth:
  token: {secrets: [tok-inst]}
rate-limit: {ip-per-minute: 1000, instance-per-minute: 60, instance-burst: 3}
"""))
        h = {"x-webhook-token": "tok-inst"}
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            replies = []
            for _ in range(4):
                raw = upsert(new_id(), instance="acme-bot")
                replies.append(harness.request(srv.port, "POST", WEBHOOK_PATH, raw,
                                               dict(h, **{"Content-Type": "application/json"}),
                                               conn=conn))
        finally:
            conn.close()
        for i in range(3):
            self.assertAccepted(replies[i], srv, "request %d within the burst of 3" % (i + 1))
        self.assertError(replies[3], 429, "rate limited", srv, "4th rapid request of acme-bot")
        self.assertRetryAfter(replies[3], 1)
        raw = upsert(new_id(), instance="other-bot")
        self.assertAccepted(srv.post(raw, h), srv, "another instance has its own bucket")
        self.assertEqual(len(srv.events()), 4)

    def test_503_store_full(self):
        srv = self.new_server(make_conf("auth:\n  token: {secrets: [tok-full]}\n",
                                        top="wahook.store.max-size: 768K"))
        h = {"x-webhook-token": "tok-full"}
        accepted = {}
        full = None
        for i in range(200):
            mid = new_id("F")
            raw = upsert(mid, pad=100 * 1024)
            r = srv.post(raw, h)
            if r.status == 503:
                full = r
                break
            accepted[mid] = self.assertAccepted(r, srv, "request %d before the store is full" % i)
        self.assertIsNotNone(full, "no 503 within 200 x 100 KB bodies with max-size 768K")
        self.assertError(full, 503, None, srv, "store full")
        self.assertRetryAfter(full, 1)
        self.assertGreaterEqual(len(accepted), 1, "at least one 100 KB event fits in 768K (the empty schema takes about 300K)")
        rows = {r["dedup_id"]: r["id"] for r in srv.query("SELECT id, dedup_id FROM events")}
        for mid, eid in accepted.items():
            self.assertEqual(rows.get(mid), eid, "accepted %s (id %d) must be stored" % (mid, eid))
        r = srv.get("/readyz")
        body = self.assertJsonReply(r, 503, None, srv, "/readyz with a full store")
        self.assertEqual(body.get("status"), "not ready")
        self.assertIsInstance(body.get("reasons"), list)
        self.assertTrue(body["reasons"], "readyz names a reason")
        body = self.assertJsonReply(srv.get("/healthz"), 200, None, srv,
                                    "the process is alive: healthz stays 200")
        self.assertEqual(body.get("status"), "ok")


if __name__ == "__main__":
    harness.main()
