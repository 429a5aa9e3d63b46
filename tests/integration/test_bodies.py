"""Request bodies on the wire: chunked transfer coding, oversized chunked bodies, a 5 MB base64
body that must not hold up other requests, and keep-alive connections."""

import base64
import hashlib
import http.client
import json
import os
import socket
import threading

import harness
from harness import (WEBHOOK_PATH, chunked_parts, compact, fixture, make_conf, raw_request,
                     request_head, sign, upsert)

TOKEN = "bodies-tok-31d5"
ROUTE = """
auth:
  hmac:  {secrets: [%s]}
  token: {secrets: [%s]}
rate-limit: {ip-per-minute: 100000, instance-per-minute: 600000, instance-burst: 100000}
""" % (TOKEN, TOKEN)


def big_media_body(msg_id, raw_bytes):
    obj = fixture("messages-upsert-image-base64")
    obj["data"]["key"]["id"] = msg_id
    b64 = base64.b64encode(os.urandom(raw_bytes)).decode("ascii")
    obj["data"]["message"]["base64"] = b64
    return compact(obj), b64


def read_response(sock):
    r = http.client.HTTPResponse(sock, method="POST")
    r.begin()
    return harness._resp_from(r)


class Chunked(harness.WahookTestCase):
    def test_chunked_body_accepted(self):
        srv = self.new_server(make_conf(ROUTE, limit="64K"))
        raw = upsert("BODY-CHUNKED", pad=20000)
        pieces = [raw[i:i + 1000] for i in range(0, len(raw), 1000)]
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.request("POST", WEBHOOK_PATH, body=iter(pieces), encode_chunked=True,
                         headers={"Content-Type": "application/json",
                                  "Transfer-Encoding": "chunked",
                                  "x-webhook-signature": sign(TOKEN, raw)})
            r = harness._resp_from(conn.getresponse())
        finally:
            conn.close()
        eid = self.assertAccepted(r, srv, "chunked body, HMAC over the de-chunked bytes")
        row = srv.event(eid)
        self.assertEqual(row["dedup_id"], "BODY-CHUNKED")
        stored = json.loads(row["body"])
        self.assertEqual(stored["data"], json.loads(raw)["data"], "the whole body was read")

    def test_chunked_over_limit_is_413(self):
        srv = self.new_server(make_conf(ROUTE, limit="64K"))
        raw = upsert("BODY-CHUNKED-BIG", pad=100 * 1024)
        head = request_head("POST", WEBHOOK_PATH, {
            "Content-Type": "application/json", "Transfer-Encoding": "chunked",
            "x-webhook-token": TOKEN})
        r = raw_request(srv.port, head, chunked_parts(raw, 8192))
        self.assertReply(r, 413, srv, "100 KB chunked over 64K")
        if (r.header("content-type") or "").startswith("application/json"):
            self.assertEqual(r.json(), {"error": "request body too large"})
        self.assertEqual(srv.events(), [])
        # the server is still fine afterwards
        self.assertAccepted(srv.post(upsert("BODY-AFTER-413"), {"x-webhook-token": TOKEN}), srv)


class LargeBodies(harness.WahookTestCase):
    def setUp(self):
        # one server per test: a crash in one must not hide the others' results
        self.srv = self.new_server(make_conf(ROUTE, limit="16M", threads=2))

    def check_big_stored(self, eid, b64, msg_id):
        row = self.srv.event(eid)
        self.assertEqual(row["dedup_id"], msg_id)
        body = row["body"]
        body = body.decode() if isinstance(body, bytes) else body
        self.assertLess(len(body), 100000, "the 5 MB base64 is not stored (%d bytes stored)" %
                        len(body))
        self.assertNotIn(b64[:64], body)
        digests = {hashlib.sha256(base64.b64decode(b64)).hexdigest(),
                   hashlib.sha256(b64.encode()).hexdigest()}
        self.assertTrue(any(d in body for d in digests), "replaced by size and SHA-256")

    def test_bodies_above_offload_threshold_in_a_row(self):
        # bodies over the offload threshold (256 KiB by default) are parsed off the loop thread
        ids = []
        for i in range(8):
            raw, b64 = big_media_body("BODY-OFF-%d" % i, 450 * 1024)
            eid = self.assertAccepted(self.srv.post(raw, {"x-webhook-token": TOKEN}), self.srv,
                                      "offloaded body %d" % i)
            self.check_big_stored(eid, b64, "BODY-OFF-%d" % i)
            ids.append(eid)
            dup = self.srv.post(raw, {"x-webhook-token": TOKEN})
            self.assertEqual(self.assertDuplicate(dup, self.srv, "offloaded duplicate %d" % i), eid)
        self.assertEqual(len(set(ids)), 8)
        self.assertAccepted(self.srv.post(upsert("BODY-OFF-AFTER"), {"x-webhook-token": TOKEN}),
                            self.srv, "the server is alive after offloaded bodies")
        self.srv.check_alive()

    def test_small_request_answered_while_big_body_is_half_sent(self):
        raw, b64 = big_media_body("BODY-BIG-HALF", 3932160)  # 5 MiB of base64 text
        self.assertGreater(len(raw), 5 * 1024 * 1024)
        head = request_head("POST", WEBHOOK_PATH, {
            "Content-Type": "application/json", "Content-Length": str(len(raw)),
            "x-webhook-signature": sign(TOKEN, raw)})
        s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=60)
        try:
            s.sendall(head + raw[:len(raw) // 2])
            # the big request is in flight (half its body received): others must be served
            for i in range(3):
                r = self.srv.post(upsert("BODY-SMALL-%d" % i), {"x-webhook-token": TOKEN},
                                  timeout=20)
                self.assertAccepted(r, self.srv, "small request %d during a half-sent 5 MB body"
                                    % i)
            s.sendall(raw[len(raw) // 2:])
            r = read_response(s)
        finally:
            s.close()
        eid = self.assertAccepted(r, self.srv, "the 5 MB body once complete")
        self.check_big_stored(eid, b64, "BODY-BIG-HALF")

    def test_small_request_answered_while_big_body_is_processed(self):
        raw, b64 = big_media_body("BODY-BIG-FULL", 3932160)
        sent = threading.Event()
        out = {}

        def big():
            try:
                s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=60)
                try:
                    s.sendall(request_head("POST", WEBHOOK_PATH, {
                        "Content-Type": "application/json", "Content-Length": str(len(raw)),
                        "x-webhook-signature": sign(TOKEN, raw)}) + raw)
                    sent.set()
                    out["resp"] = read_response(s)
                finally:
                    s.close()
            except Exception as e:  # noqa: BLE001
                out["error"] = repr(e)
            finally:
                sent.set()

        t = threading.Thread(target=big, daemon=True)
        t.start()
        self.assertTrue(sent.wait(60), "the big body could not be sent")
        small = self.srv.post(upsert("BODY-SMALL-X"), {"x-webhook-token": TOKEN}, timeout=20)
        t.join(60)
        self.assertFalse(t.is_alive(), "the big request was not answered within 60 s")
        self.assertAccepted(small, self.srv, "small request while a 5 MB body is processed")
        self.assertNotIn("error", out, out.get("error"))
        eid = self.assertAccepted(out["resp"], self.srv, "5 MB base64 body under a 16M limit")
        self.check_big_stored(eid, b64, "BODY-BIG-FULL")


class KeepAlive(harness.WahookTestCase):
    def test_100_requests_on_one_connection(self):
        srv = self.new_server(make_conf(ROUTE))
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.connect()
            local = conn.sock.getsockname()
            ids = set()
            for i in range(100):
                raw = upsert("BODY-KA-%03d" % i)
                conn.request("POST", WEBHOOK_PATH, body=raw, headers={
                    "Content-Type": "application/json", "x-webhook-token": TOKEN})
                r = harness._resp_from(conn.getresponse())
                ids.add(self.assertAccepted(r, srv, "request %d on one connection" % i))
                self.assertNotEqual((r.header("connection") or "").lower(), "close",
                                    "request %d: the server must keep the connection" % i)
                self.assertIsNotNone(conn.sock, "connection dropped after request %d" % i)
                self.assertEqual(conn.sock.getsockname(), local,
                                 "request %d went over a new connection" % i)
        finally:
            conn.close()
        self.assertEqual(len(ids), 100)
        self.assertEqual(len(srv.events()), 100)


if __name__ == "__main__":
    harness.main()
