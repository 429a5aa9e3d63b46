"""A TLS listener next to a plain one (HTTP/1.1 only, no h2 in ALPN), and a wahook.health path."""

import http.client
import json
import os
import ssl
import subprocess

import harness
from harness import make_conf, upsert

TOKEN = "tls-tok"
ROUTE = "auth:\n  token: {secrets: [%s]}\n" % TOKEN


def make_cert(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


class Tls(harness.WahookTestCase):
    def test_tls_listener_accepts_webhooks_over_http1(self):
        srv = self.new_server(make_conf(ROUTE, listen=(
            "listen:\n"
            "  - port: @PORT@\n    host: 127.0.0.1\n"
            "  - port: @PORT2@\n    host: 127.0.0.1\n"
            "    ssl:\n      certificate-file: @TMP@/cert.pem\n      key-file: @TMP@/key.pem\n")),
            start=False)
        make_cert(srv.tmp)
        srv.start()
        ctx = ssl.create_default_context(cafile=os.path.join(srv.tmp, "cert.pem"))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port2, context=ctx, timeout=30)
        try:
            body = upsert("TLS-1")
            conn.request("POST", harness.WEBHOOK_PATH, body=body,
                         headers={"content-type": "application/json", "x-webhook-token": TOKEN})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            self.assertEqual(resp.status, 200, data)
            self.assertEqual(data["status"], "accepted")
            # HTTP/2 must not be offered (the packaged libh2o lacks the Rapid Reset fix).
            self.assertNotEqual(conn.sock.selected_alpn_protocol(), "h2")
            self.assertEqual(resp.version, 11)
        finally:
            conn.close()
        self.assertEqual([r["dedup_id"] for r in srv.events()], ["TLS-1"])
        # plain HTTP on the TLS port is never served as a webhook
        try:
            r = srv.post(upsert("TLS-PLAIN"), {"x-webhook-token": TOKEN}, port=srv.port2)
            self.assertNotEqual(r.status, 200, "plain HTTP accepted on a TLS listener")
        except (OSError, http.client.HTTPException):
            pass
        self.assertEqual(len(srv.events()), 1)

    def test_bad_certificate_path_refuses_to_start(self):
        srv = self.new_server(make_conf(ROUTE, listen=(
            "listen:\n  port: @PORT@\n  host: 127.0.0.1\n"
            "  ssl:\n    certificate-file: @TMP@/missing.pem\n    key-file: @TMP@/missing.pem\n")),
            start=False)
        proc = srv.spawn()
        rc = proc.wait(timeout=15)
        self.assertNotEqual(rc, 0)
        self.assertIn("TLS setup", srv.stderr())
        srv.proc = None


class HealthPath(harness.WahookTestCase):
    def test_wahook_health_handler_path(self):
        conf = make_conf(ROUTE) + "      /status:\n        wahook.health: ON\n"
        srv = self.new_server(conf)
        for path, status in (("/status", "ready"), ("/status/readyz", "ready"),
                             ("/status/healthz", "ok")):
            body = self.assertJsonReply(srv.get(path), 200, None, srv, path)
            self.assertEqual(body["status"], status, path)
        self.assertError(srv.get("/status/other"), 404, "not found", srv)


if __name__ == "__main__":
    harness.main()
