"""Alerts and mail (issue 4): the QR code mailed as a decodable PNG attachment through SMTP
(with AUTH); UTF-8 subjects and bodies, several recipients; a 451 is retried, a wrong SMTP
password is a misconfigured target; wahook.alert fans out to the alert URLs (JSON, or Slack's
{"text"}) and the e-mail recipients; a failing alert URL is retried; dead letters raise one
alert per target per interval; the watchdog alerts once while the stand-in Evolution reports
`close` (or the instance is missing) and once when it clears, shares the incident with the
scripts' own close alert, and alerts on webhook silence and on authentication rejections that
spike."""

import base64
import json
import time

import harness
import proc_helpers as ph
from standins import DeliveryCase, delivery_top, outbox, wait_outbox

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def watchdog(interval="200ms", **kw):
    w = {"interval": interval, "instances": "[acme-bot]"}
    w.update(kw)
    return w


class Mail(harness.WahookTestCase, DeliveryCase):
    def test_qr_code_mail_carries_a_decodable_png(self):
        smtp = self.smtp(user="alerts-user", password="s3cret", require_auth=True)
        srv = self.server(delivery_top(
            smtp=smtp, smtp_opts={"user": "alerts-user", "password": "s3cret",
                                  "from": "wahook@test.invalid"},
            scripts_config={"qr_to": "ops@example.com"}))
        qr = self.fixture_obj("qrcode-updated")
        self.post_obj(srv, qr)
        mail = smtp.wait_mails(1, timeout=20)[0]
        self.assertEqual(mail["rcpt_to"], ["ops@example.com"])
        self.assertEqual(mail["mail_from"], "wahook@test.invalid")
        self.assertEqual(mail["auth_user"], "alerts-user", "SMTP AUTH with the configured user")
        self.assertIn("wahook@test.invalid", mail["from"] or "")
        self.assertIn("ops@example.com", mail["to"] or "")
        self.assertEqual(mail["subject"], "QR code for acme-bot")
        self.assertIn("Scan the attached QR code.", mail["text"] or "")
        atts = mail["attachments"]
        self.assertEqual(len(atts), 1, [(a["filename"], a["content_type"]) for a in atts])
        a = atts[0]
        self.assertEqual(a["filename"], "qr.png")
        self.assertEqual(a["content_type"], "image/png")
        self.assertTrue(a["data"].startswith(PNG_SIGNATURE), "PNG signature: %r" % a["data"][:16])
        want = base64.b64decode(qr["data"]["qrcode"]["base64"].split(",", 1)[1])
        self.assertEqual(a["data"], want, "the attachment is the QR image, byte for byte")
        self.assertEqual(a["data"][12:16], b"IHDR")
        wait_outbox(srv, 1, "mail", want=("done",))

    def test_smtp_temporary_failure_is_retried(self):
        smtp = self.smtp()
        smtp.configure(fail_next=2, fail_code=451, fail_stage="data")
        srv = self.server(delivery_top(smtp=smtp))
        self.post_actions(srv, {"mail": ["ops@example.com"], "subject": "retry me",
                                "body": "second time lucky"})
        mails = smtp.wait_mails(1, timeout=20)
        wait_outbox(srv, 1, "mail", want=("done",))
        time.sleep(0.7)
        self.assertEqual(len(smtp.snapshot()), 1, "delivered once after two 451s")
        self.assertEqual(mails[0]["subject"], "retry me")


    def test_utf8_subject_body_and_several_recipients(self):
        smtp = self.smtp()
        srv = self.server(delivery_top(smtp=smtp))
        self.post_actions(srv, {"mail": ["a@example.com", "b@example.com"],
                                "subject": "Cita mañana ✓ — 10:00",
                                "body": "Hola María,\nla cita es mañana a las 10:00 ✓\n.\nfin"})
        m = smtp.wait_mails(1, timeout=15)[0]
        self.assertEqual(sorted(m["rcpt_to"]), ["a@example.com", "b@example.com"])
        self.assertEqual(m["subject"], "Cita mañana ✓ — 10:00", "RFC 2047 subject decodes back")
        self.assertEqual((m["text"] or "").replace("\r\n", "\n").rstrip("\n"),
                         "Hola María,\nla cita es mañana a las 10:00 ✓\n.\nfin",
                         "UTF-8 body intact (a lone '.' line survives dot-stuffing)")
        self.assertEqual(m["attachments"], [])

    def test_wrong_smtp_password_is_misconfigured(self):
        smtp = self.smtp(user="mailer", password="right", require_auth=True)
        alerts = self.alert_sink()
        srv = self.server(delivery_top(smtp=smtp, alerts=alerts,
                                       smtp_opts={"user": "mailer", "password": "wrong"}))
        self.post_actions(srv, {"mail": ["ops@example.com"], "subject": "s", "body": "b"})
        got = alerts.wait_alerts(1, timeout=15)
        time.sleep(2.0)
        self.assertEqual(len(alerts.alerts()), 1, alerts.alerts())
        self.assertEqual(got[0].get("kind"), "target_misconfigured", got[0])
        text = json.dumps(got[0]).lower()
        self.assertTrue("smtp" in text or "mail" in text, "the alert names the target: %r" %
                        got[0])
        self.assertEqual([r["status"] for r in outbox(srv, "mail")], ["pending"], "not dead")
        smtp.configure(password="wrong")  # the server's password is accepted now
        smtp.wait_mails(1, timeout=15)
        wait_outbox(srv, 1, "mail", want=("done",))


class Fanout(harness.WahookTestCase, DeliveryCase):
    def test_alert_goes_to_urls_and_emails(self):
        alerts = self.alert_sink()
        smtp = self.smtp()
        srv = self.server(delivery_top(alerts=alerts, smtp=smtp,
                                       alert_emails=["team@example.com"]))
        self.post_actions(srv, {"alert": "handoff", "text": "María wants a human",
                                "fields": {"reason": "asked"}})
        got = alerts.wait_alerts(1, timeout=15)[0]
        call = alerts.snapshot(lambda c: c.get("kind") == "alert")[0]
        self.assertEqual(call["path"], "/alerts")
        self.assertEqual(call["headers"].get("content-type", "").split(";")[0],
                         "application/json")
        self.assertEqual(got.get("kind"), "handoff", got)
        self.assertEqual(got.get("text"), "María wants a human")
        self.assertEqual((got.get("fields") or {}).get("reason"), "asked", got)
        self.assertEqual(got.get("instance"), "acme-bot", got)
        self.assertIn("at", got, "json alerts carry a time: %r" % got)
        mail = smtp.wait_mails(1, timeout=15)[0]
        self.assertEqual(mail["rcpt_to"], ["team@example.com"])
        self.assertIn("María wants a human", (mail["subject"] or "") + (mail["text"] or ""))
        time.sleep(0.5)
        self.assertEqual(len(alerts.alerts()), 1)
        self.assertEqual(len(smtp.snapshot()), 1)

    def test_slack_format(self):
        alerts = self.alert_sink()
        srv = self.server(delivery_top(alerts=alerts, alert_format="slack"))
        self.post_actions(srv, {"alert": "handoff", "text": "slack me"})
        got = alerts.wait_alerts(1, timeout=15)[0]
        self.assertIsInstance(got.get("text"), str, got)
        self.assertIn("slack me", got["text"])

    def test_failing_alert_url_is_retried(self):
        alerts = self.alert_sink()
        alerts.configure(fail_next=2, fail_status=502)
        srv = self.server(delivery_top(alerts=alerts))
        self.post_actions(srv, {"alert": "handoff", "text": "third time"})
        alerts.wait_alerts(1, timeout=15)
        wait_outbox(srv, 1, "alert", want=("done",))
        time.sleep(0.7)
        self.assertEqual(len(alerts.alerts()), 1)
        self.assertEqual([c["status"] for c in alerts.snapshot()], [502, 502, 200])

    def test_dead_letters_alert_once_per_target_per_interval(self):
        evo = self.evolution()
        phones = ["34600001201", "34600001202", "34600001203"]
        evo.configure(exists_false=phones)
        alerts = self.alert_sink()
        srv = self.server(delivery_top(evolution=evo, alerts=alerts,
                                       delivery={"dead-alert-interval": "1h"}))
        for p in phones:
            self.post_actions(srv, {"send": "to nobody"}, phone=p)
        deadline = time.monotonic() + 15
        for _ in range(400):
            if len(outbox(srv, "evolution", status="dead")) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(len(outbox(srv, "evolution", status="dead")), 3)
        alerts.wait_alerts(1, timeout=10)
        time.sleep(1.5)
        got = alerts.alerts()
        self.assertEqual(len(got), 1, "one dead-letter alert for three dead rows: %r" % got)
        self.assertIn("evolution", json.dumps(got[0]), got[0])


class Watchdog(harness.WahookTestCase, DeliveryCase):
    def test_close_alerts_once_and_once_when_it_clears(self):
        evo = self.evolution(state="close")
        alerts = self.alert_sink()
        self.server(delivery_top(evolution=evo, alerts=alerts, watchdog=watchdog()))
        first = alerts.wait_alerts(1, timeout=15)
        time.sleep(2.0)  # about ten more polls of a still-closed instance
        polls = evo.snapshot(lambda c: c.get("kind") == "connectionState")
        self.assertGreaterEqual(len(polls), 5, "the watchdog polls connectionState")
        self.assertTrue(all(c["headers"].get("apikey") == "k" for c in polls))
        self.assertEqual(alerts.alerts(), first, "one alert per incident, not per poll")
        self.assertIn("acme-bot", json.dumps(first[0]))

        evo.configure(state="open")
        alerts.wait_alerts(2, timeout=10)
        time.sleep(1.5)
        got = alerts.alerts()
        self.assertEqual(len(got), 2, "one more alert when it clears: %r" % got)
        self.assertNotEqual(got[0].get("kind"), None)

    def test_script_close_alert_and_watchdog_share_the_incident(self):
        evo = self.evolution(state="close")
        alerts = self.alert_sink()
        srv = self.server(delivery_top(evolution=evo, alerts=alerts, watchdog=watchdog(),
                                       scripts_config={"close_alert": True}))
        eid = self.post_obj(srv, self.fixture_obj("connection-update-close"))
        self.wait_events(srv, [eid])
        alerts.wait_alerts(1, timeout=15)
        time.sleep(2.0)
        self.assertEqual(len(alerts.alerts()), 1, "the scripts' close alert and the watchdog's "
                         "are one incident: %r" % alerts.alerts())
        evo.configure(state="open")
        eid = self.post_obj(srv, self.fixture_obj("connection-update-open"))
        self.wait_events(srv, [eid])
        alerts.wait_alerts(2, timeout=10)
        time.sleep(1.5)
        self.assertEqual(len(alerts.alerts()), 2, "one alert when it clears: %r" %
                         alerts.alerts())

    def test_missing_instance_alerts(self):
        evo = self.evolution(instances=("another-bot",))
        alerts = self.alert_sink()
        self.server(delivery_top(evolution=evo, alerts=alerts, watchdog=watchdog()))
        got = alerts.wait_alerts(1, timeout=15)
        time.sleep(1.5)
        self.assertEqual(len(alerts.alerts()), 1, alerts.alerts())
        self.assertIn("acme-bot", json.dumps(got[0]))

    def test_silence_alerts_once_and_clears_on_the_next_webhook(self):
        evo = self.evolution()
        alerts = self.alert_sink()
        srv = self.server(delivery_top(evolution=evo, alerts=alerts,
                                       watchdog=watchdog(silence="1s")))
        ph.post(self, srv, ph.text_body("SILENCE-1", text="hello"))  # an instance seen once
        first = alerts.wait_alerts(1, pred=lambda a: "acme-bot" in json.dumps(a), timeout=15)
        time.sleep(1.5)
        self.assertEqual(len(alerts.alerts()), 1, "one silence alert: %r" % alerts.alerts())
        ph.post(self, srv, ph.text_body("SILENCE-2", text="back"))
        alerts.wait_alerts(2, timeout=10)
        time.sleep(0.5)
        got = alerts.alerts()
        self.assertEqual(len(got), 2, got)
        self.assertNotEqual(got[0].get("kind"), got[1].get("kind"), "an alert, then its clear")
        self.assertEqual(first[0], got[0])

    def test_auth_rejection_spike_alerts(self):
        evo = self.evolution()
        alerts = self.alert_sink()
        srv = self.server(delivery_top(evolution=evo, alerts=alerts,
                                       watchdog=watchdog(**{"auth-failures-per-minute": 5})))
        for i in range(10):
            r = srv.post(ph.text_body("AUTHSPIKE%02d" % i), {"x-webhook-token": "wrong"})
            self.assertEqual(r.status, 401)
        got = alerts.wait_alerts(1, timeout=15)
        time.sleep(1.0)
        self.assertEqual(len(alerts.alerts()), 1, alerts.alerts())
        self.assertIn("auth", json.dumps(got[0]).lower(), got[0])


if __name__ == "__main__":
    harness.main()
