"""/healthz and /readyz on the webhook listener and on the admin listener, and several webhook
listeners from a `listen` sequence."""

import harness
from harness import make_conf, upsert

ROUTE = "auth:\n  token: {secrets: [health-tok]}\n"


class Health(harness.WahookTestCase):
    def check_health(self, srv, port, where):
        # extra diagnostic fields (queue depth, empty reasons) are allowed
        body = self.assertJsonReply(srv.get("/healthz", port=port), 200, None, srv,
                                    "/healthz on the %s listener" % where)
        self.assertEqual(body.get("status"), "ok", "/healthz on the %s listener" % where)
        body = self.assertJsonReply(srv.get("/readyz", port=port), 200, None, srv,
                                    "/readyz on the %s listener" % where)
        self.assertEqual(body.get("status"), "ready", "/readyz on the %s listener" % where)

    def test_health_on_webhook_and_admin_listeners(self):
        srv = self.new_server(make_conf(ROUTE))
        srv.wait_ready([srv.admin_port])
        self.check_health(srv, srv.port, "webhook")
        self.check_health(srv, srv.admin_port, "admin")
        # still ready after a write
        self.assertAccepted(srv.post(upsert("H-1"), {"x-webhook-token": "health-tok"}), srv)
        self.check_health(srv, srv.port, "webhook (after a write)")
        self.check_health(srv, srv.admin_port, "admin (after a write)")

    def test_two_listeners_both_accept_webhooks(self):
        listen = ("listen:\n"
                  "  - port: @PORT@\n    host: 127.0.0.1\n"
                  "  - port: @PORT2@\n    host: 127.0.0.1\n")
        srv = self.new_server(make_conf(ROUTE, listen=listen))
        srv.wait_ready([srv.port2, srv.admin_port])
        h = {"x-webhook-token": "health-tok"}
        a = self.assertAccepted(srv.post(upsert("H-A"), h, port=srv.port), srv, "first listener")
        b = self.assertAccepted(srv.post(upsert("H-B"), h, port=srv.port2), srv,
                                "second listener")
        self.assertNotEqual(a, b)
        # one store behind both: a duplicate through the other listener is recognised
        d = self.assertDuplicate(srv.post(upsert("H-A"), h, port=srv.port2), srv,
                                 "duplicate across listeners")
        self.assertEqual(d, a)
        self.assertError(srv.post(upsert("H-C"), {"x-webhook-token": "bad"}, port=srv.port2),
                         401, "invalid signature", srv, "auth applies on the second listener")
        self.check_health(srv, srv.port, "first")
        self.check_health(srv, srv.port2, "second")
        self.assertEqual(sorted(r["dedup_id"] for r in srv.events()), ["H-A", "H-B"])


if __name__ == "__main__":
    harness.main()
