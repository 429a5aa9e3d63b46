"""CRM sync (issue 4) through the default mapping module scripts/crm/twenty.lua against a
stand-in Twenty that behaves like the reference (twenty-crm.md): Bearer auth, path rules,
phone normalisation on write, filters, ?upsert=true, noteTarget link-field names, 429 after
`limit` requests per sliding window. Scenarios: a person is created once with the normalised
phone and found again; activities become one note per contact per day linked once; lead score
and tasks; the legacy link-field name; the CRM down for a while (replies keep flowing, CRM
writes catch up, nothing lost, no duplicate person); a flood stays inside the rate window and
drains; 429 is honoured; a wrong key is a misconfigured target (one alert, nothing dead); a
person already in the CRM (also an unnormalised legacy row) is found, one deleted there is
recreated; and, with a small custom module, the runner's contract (wahook.http.request, the
failure classes) and the hot reload of the deliverers' VMs."""

import collections
import os
import re
import time

import harness
from standins import DeliveryCase, delivery_top, outbox, wait_outbox

PHONE = "34600111222"


def national(phone):
    """Spanish test numbers: 34 + 9 national digits."""
    assert phone.startswith("34") and len(phone) == 11, phone
    return phone[2:]


class CrmCase(harness.WahookTestCase, DeliveryCase):
    def person_of(self, tw, phone):
        got = tw.people_by_phone(national(phone), "+34")
        self.assertEqual(len(got), 1, "exactly one person for %s: %r" % (
            phone, [(p["id"], p["phones"]) for p in tw.people()]))
        return got[0]

    def check_requests_well_formed(self, tw, key="tw-key"):
        for c in tw.rest_calls():
            self.assertEqual(c["headers"].get("authorization"), "Bearer " + key,
                             "%s %s: Bearer auth" % (c["method"], c["path"]))
            if c["method"] in ("POST", "PATCH", "PUT"):
                self.assertEqual(c["headers"].get("content-type", "").split(";")[0],
                                 "application/json", "%s %s" % (c["method"], c["path"]))
            if c["method"] == "GET" and re.match(r"^/rest/[A-Za-z]+$", c["path"]):
                self.assertIn("limit", c["query"], "find-many sends an explicit limit: %s?%s" %
                              (c["path"], c["raw_query"]))
                self.assertEqual(c["query"].get("depth"), ["0"],
                                 "find-many sends depth=0: %s?%s" % (c["path"], c["raw_query"]))


class People(CrmCase):
    def test_person_created_once_with_normalised_phone(self):
        tw = self.twenty()
        srv = self.server(delivery_top(twenty=tw))
        self.post_actions(srv, {"crm": "contact_upsert"}, push_name="María López")
        wait_outbox(srv, 1, "crm", want=("done",), timeout=20)
        p = self.person_of(tw, PHONE)
        self.assertEqual(p["phones"]["primaryPhoneCallingCode"], "+34")
        self.assertEqual(p["phones"]["primaryPhoneCountryCode"], "ES")
        full = "%s %s" % (p["name"]["firstName"], p["name"]["lastName"])
        self.assertIn("María", full, "name from the push name: %r" % p["name"])
        self.assertIn("López", full, "name from the push name: %r" % p["name"])
        self.assertEqual(p["createdBy"]["source"], "API")

        # again (a new push name): the same person, and no second lookup
        gets_before = len(tw.rest_calls("GET", "/rest/people"))
        self.post_actions(srv, {"crm": "contact_upsert", "fields": {"name": "María L. Pérez"}})
        wait_outbox(srv, 2, "crm", want=("done",), timeout=20)
        p2 = self.person_of(tw, PHONE)
        self.assertEqual(p2["id"], p["id"])
        self.assertEqual(len(tw.rest_calls("GET", "/rest/people")), gets_before,
                         "the person id is cached per contact: no second lookup")
        self.check_requests_well_formed(tw)
        self.assertEqual(outbox(srv, "crm", status="dead"), [])

    def test_no_duplicate_person_from_a_fresh_store(self):
        """Twenty's create does not deduplicate on phone: a second wahook with an empty store
        must find (or deterministically upsert) the same person."""
        tw = self.twenty()
        for run in range(2):
            srv = self.server(delivery_top(twenty=tw))
            self.post_actions(srv, {"crm": "contact_upsert"}, push_name="María López")
            wait_outbox(srv, 1, "crm", want=("done",), timeout=20)
            srv.stop()
        self.assertEqual(len(tw.people()), 1, [p["id"] for p in tw.people()])


    def seed_person(self, tw, phones, name=("Ana", "Existing")):
        import uuid as uuid_
        pid = str(uuid_.uuid4())
        rec = tw._blank("people")
        rec.update({"id": pid, "name": {"firstName": name[0], "lastName": name[1]},
                    "phones": dict(rec["phones"], **phones), "createdAt": "2025-01-01T00:00:00Z",
                    "updatedAt": "2025-01-01T00:00:00Z"})
        with tw.lock:
            tw.records["people"][pid] = rec
        return pid

    def test_existing_person_is_found_not_duplicated(self):
        tw = self.twenty()
        pid = self.seed_person(tw, {"primaryPhoneNumber": "600111222",
                                    "primaryPhoneCallingCode": "+34",
                                    "primaryPhoneCountryCode": "ES"})
        legacy = self.seed_person(tw, {"primaryPhoneNumber": "+34600333444"},
                                  name=("Jordi", "Legacy"))  # an old unnormalised row
        srv = self.server(delivery_top(twenty=tw))
        self.post_actions(srv, {"crm": "contact_upsert"}, {"crm": "lead_score",
                                                           "fields": {"score": 60}})
        self.post_actions(srv, {"crm": "contact_upsert"}, {"crm": "lead_score",
                                                           "fields": {"score": 61}},
                          phone="34600333444")
        wait_outbox(srv, 4, "crm", want=("done",), timeout=20)
        self.assertEqual(len(tw.people()), 2, "found, not duplicated: %r" % [
            (p["id"], p["phones"]["primaryPhoneNumber"]) for p in tw.people()])
        by_id = {p["id"]: p for p in tw.people()}
        self.assertEqual(by_id[pid].get("leadScore"), 60)
        self.assertEqual(by_id[legacy].get("leadScore"), 61, "the legacy row is found too")
        self.assertEqual(by_id[pid]["name"], {"firstName": "Ana", "lastName": "Existing"},
                         "a name set in the CRM is kept")

    def test_person_deleted_in_the_crm_is_recreated(self):
        tw = self.twenty()
        srv = self.server(delivery_top(twenty=tw))
        self.post_actions(srv, {"crm": "contact_upsert"})
        wait_outbox(srv, 1, "crm", want=("done",), timeout=20)
        pid = self.person_of(tw, PHONE)["id"]
        with tw.lock:
            del tw.records["people"][pid]  # someone deleted the person in Twenty
        self.post_actions(srv, {"crm": "lead_score", "fields": {"score": 42}})
        wait_outbox(srv, 2, "crm", want=("done",), timeout=20)
        p = self.person_of(tw, PHONE)
        self.assertEqual(p.get("leadScore"), 42, "the score lands on a person again")


class Activities(CrmCase):
    def test_activities_coalesce_into_one_linked_note_per_day(self):
        tw = self.twenty()
        srv = self.server(delivery_top(twenty=tw))
        texts = ["primera pregunta", "segunda: ¿precio?", "tercera, con (paréntesis)"]
        for t in texts:
            self.post_actions(srv, {"crm": "contact_upsert"},
                              {"crm": "activity", "fields": {"text": t}})
        wait_outbox(srv, 6, "crm", want=("done",), timeout=30)
        person = self.person_of(tw, PHONE)
        linked = tw.notes_of(person["id"])
        self.assertEqual(len(linked), 1, "one note per contact per day: %r" % [
            (n["title"], c) for n, c in linked])
        note, links = linked[0]
        self.assertEqual(links, 1, "the note is linked once")
        md = note["bodyV2"]["markdown"] or ""
        pos = [md.find(t) for t in texts]
        self.assertTrue(all(p >= 0 for p in pos), "every activity in the note: %r" % md)
        self.assertEqual(pos, sorted(pos), "appended in order: %r" % md)
        self.assertEqual(len(tw.note_targets()), 1)
        self.assertTrue(all(t.get("targetPersonId") == person["id"] for t in tw.note_targets()))
        self.check_requests_well_formed(tw)

    def test_legacy_link_field_name(self):
        tw = self.twenty(link_style="legacy")
        srv = self.server(delivery_top(twenty=tw))
        self.post_actions(srv, {"crm": "contact_upsert"},
                          {"crm": "activity", "fields": {"text": "legacy workspace"}})
        wait_outbox(srv, 2, "crm", want=("done",), timeout=30)
        person = self.person_of(tw, PHONE)
        targets = tw.note_targets()
        self.assertEqual(len(targets), 1, targets)
        self.assertEqual(targets[0].get("personId"), person["id"], targets[0])
        self.assertIn("legacy workspace", tw.notes()[0]["bodyV2"]["markdown"])
        self.assertEqual(outbox(srv, "crm", status="dead"), [])

    def test_lead_score_and_task(self):
        tw = self.twenty()
        srv = self.server(delivery_top(twenty=tw))
        self.post_actions(srv, {"crm": "contact_upsert"},
                          {"crm": "lead_score", "fields": {"score": 75}},
                          {"crm": "task", "fields": {"title": "Call back",
                                                     "body": "asked for a quote",
                                                     "due_at": "2026-01-05T08:00:00Z"}})
        wait_outbox(srv, 3, "crm", want=("done",), timeout=30)
        person = self.person_of(tw, PHONE)
        self.assertEqual(person.get("leadScore"), 75)
        tasks = tw.tasks()
        self.assertEqual(len(tasks), 1, tasks)
        self.assertEqual(tasks[0]["title"], "Call back")
        self.assertTrue((tasks[0].get("dueAt") or "").startswith("2026-01-05T08:00"), tasks[0])
        self.assertIn("asked for a quote", tasks[0]["bodyV2"]["markdown"] or "")
        tt = tw.task_targets()
        self.assertEqual([(t["taskId"], t.get("targetPersonId")) for t in tt],
                         [(tasks[0]["id"], person["id"])], "task linked once to the person")
        # a later score update patches the same person
        self.post_actions(srv, {"crm": "lead_score", "fields": {"score": 90}})
        wait_outbox(srv, 4, "crm", want=("done",), timeout=20)
        self.assertEqual(self.person_of(tw, PHONE).get("leadScore"), 90)
        self.check_requests_well_formed(tw)


class Outages(CrmCase):
    def test_crm_down_replies_flow_then_crm_catches_up(self):
        evo = self.evolution()
        tw = self.twenty()
        tw.down()
        srv = self.server(delivery_top(evolution=evo, twenty=tw))
        phones = ["34600000601", "34600000602", "34600000603"]
        sent = collections.defaultdict(list)
        for i in range(2):
            for p in phones:
                t = "m%d from %s" % (i, p)
                sent[p].append(t)
                self.post_actions(srv, {"send": "re " + t}, {"crm": "contact_upsert"},
                                  {"crm": "activity", "fields": {"text": t}}, phone=p)
        # replies are not held back by the CRM outage
        wait_outbox(srv, 6, "evolution", want=("done",), timeout=20)
        for p in phones:
            self.assertEqual(evo.texts(number=p), ["re " + t for t in sent[p]])
        time.sleep(1.5)
        crm = outbox(srv, "crm")
        self.assertEqual(len(crm), 12)
        self.assertEqual({r["status"] for r in crm}, {"pending"},
                         "CRM writes wait, none done or dead, while the CRM is down")

        tw.up()
        wait_outbox(srv, 12, "crm", want=("done",), timeout=40)
        self.assertEqual(len(tw.people()), 3, "no duplicate person: %r" % [
            p["phones"] for p in tw.people()])
        for p in phones:
            person = self.person_of(tw, p)
            linked = tw.notes_of(person["id"])
            md = "\n".join(n["bodyV2"]["markdown"] or "" for n, _ in linked)
            for t in sent[p]:
                self.assertIn(t, md, "activity %r not lost" % t)
            self.assertTrue(all(c == 1 for _, c in linked), "each note linked once: %r" % [
                c for _, c in linked])
        self.check_requests_well_formed(tw)

    def test_crm_5xx_retried_nothing_lost(self):
        tw = self.twenty()
        tw.configure(fail_next=4, fail_status=503)
        srv = self.server(delivery_top(twenty=tw))
        self.post_actions(srv, {"crm": "contact_upsert"},
                          {"crm": "activity", "fields": {"text": "after 503s"}})
        wait_outbox(srv, 2, "crm", want=("done",), timeout=30)
        person = self.person_of(tw, PHONE)
        linked = tw.notes_of(person["id"])
        self.assertEqual([c for _, c in linked], [1])
        self.assertIn("after 503s", linked[0][0]["bodyV2"]["markdown"])

    def test_wrong_crm_key_is_misconfigured_not_dead(self):
        tw = self.twenty(api_key="the-new-key")
        alerts = self.alert_sink()
        srv = self.server(delivery_top(twenty=tw, alerts=alerts, crm_key="expired-key"))
        for p in ("34600000701", "34600000702"):
            self.post_actions(srv, {"crm": "contact_upsert"}, phone=p)
        alerts.wait_alerts(1, timeout=15)
        time.sleep(3.0)
        got = alerts.alerts()
        self.assertEqual(len(got), 1, "one alert: %r" % got)
        self.assertEqual(got[0].get("kind"), "target_misconfigured", got[0])
        self.assertEqual({r["status"] for r in outbox(srv, "crm")}, {"pending"})
        self.assertLessEqual(len(tw.rest_calls()), 12, "the open circuit stops the calls")
        tw.configure(api_key="expired-key")  # the operator's key is accepted again
        wait_outbox(srv, 2, "crm", want=("done",), timeout=20)
        self.assertEqual(len(tw.people()), 2)


class RateLimit(CrmCase):
    def test_flood_stays_inside_the_window_and_drains(self):
        """150 operations (50 contacts x contact_upsert, activity, lead_score). Twenty allows
        100 requests per 60 s; wahook's default is 90/min with a burst of 10, i.e. at most 100
        in any minute. To keep the test short the stand-in's window is 10 s (limit 100) and
        wahook.crm.rate-per-minute is 540 (90 per 10 s) with the default burst of 10: the same
        shape, six times faster. Asserted: never more than 100 requests in any 10 s window,
        nothing dead, every operation applied."""
        tw = self.twenty()
        tw.configure(window_s=10.0, limit=100)
        srv = self.server(delivery_top(twenty=tw, crm_opts={"rate-per-minute": 540}))
        phones = ["346000008%02d" % i for i in range(50)]
        for i, p in enumerate(phones):
            self.post_actions(srv, {"crm": "contact_upsert"},
                              {"crm": "activity", "fields": {"text": "flood %d" % i}},
                              {"crm": "lead_score", "fields": {"score": i}}, phone=p)
        t0 = time.monotonic()
        wait_outbox(srv, 150, "crm", timeout=150)
        drain = time.monotonic() - t0
        n = len(tw.rest_calls())
        worst = tw.max_window(10.0)
        print("\n    flood: %d operations -> %d Twenty requests in %.1f s; max %d in any 10 s "
              "window; %d answered 429" % (150, n, drain, worst, tw.rate_limited))
        self.assertLessEqual(worst, 100, "requests in the busiest 10 s window")
        self.assertEqual(outbox(srv, "crm", status="dead"), [], "nothing dead")
        self.assertEqual(len(tw.people()), 50)
        for i, p in enumerate(phones):
            person = self.person_of(tw, p)
            self.assertEqual(person.get("leadScore"), i)
            md = "\n".join(n_["bodyV2"]["markdown"] or "" for n_, _ in
                           tw.notes_of(person["id"]))
            self.assertIn("flood %d" % i, md)

    def test_429_retry_after_honoured(self):
        tw = self.twenty()
        tw.configure(window_s=4.0, limit=4)
        srv = self.server(delivery_top(twenty=tw, crm_opts={"rate-per-minute": 100000,
                                                            "burst": 1000}))
        phones = ["346000009%02d" % i for i in range(6)]
        for p in phones:
            self.post_actions(srv, {"crm": "contact_upsert"}, phone=p)
        wait_outbox(srv, 6, "crm", timeout=60)
        self.assertEqual(outbox(srv, "crm", status="dead"), [], "429 is retried, never dead")
        self.assertEqual(len(tw.people()), 6)
        limited = [c for c in tw.rest_calls() if c.get("rate_limited")]
        # Retry-After (up to 4 s) instead of retry-base 100 ms: a handful of 429s, not dozens
        self.assertLessEqual(len(limited), 8, "wahook backs off on 429: %d were answered 429" %
                             len(limited))


PROBE_LUA = """-- A minimal mapping module for the runner's contract: one company per operation.
local wahook = require "wahook"
local PREFIX = "@PREFIX@"
local M = {}
function M.deliver(op, fields, ctx)
  local mode = fields.mode or "create"
  if mode == "permanent" then error({ permanent = true, message = "probe: bad input" }, 0) end
  if mode == "bad_path" then
    local r = wahook.http.request { method = "GET", url = "/rest/contacts?depth=0&limit=1" }
    error("probe: twenty answered " .. tostring(r and r.status))
  end
  local r, err = wahook.http.request {
    method = "POST", url = "/rest/companies?upsert=true&depth=0",
    body = { id = fields.id, name = PREFIX .. ":" .. fields.n },
  }
  if not r then error({ retry = true, message = "probe: " .. tostring(err) }, 0) end
  if r.status ~= 201 then error("probe: create company answered " .. r.status) end
  local rec = r.json and r.json.data and r.json.data.createCompany
  if not rec or rec.id ~= fields.id then error({ permanent = true, message = "probe: bad answer" }, 0) end
end
return M
"""


class CustomModule(CrmCase):
    IDS = ["0a4f6c2e-1111-4a5b-8c6d-00000000000%d" % i for i in range(5)]

    def probe_server(self, tw):
        return self.server(delivery_top(twenty=tw, crm_opts={"module": "crm.probe"}),
                           extra={"crm/probe.lua": PROBE_LUA.replace("@PREFIX@", "v1")})

    def company_names(self, tw):
        return sorted(c["name"] for c in tw.all("companies"))

    def test_http_request_contract_and_failure_classes(self):
        tw = self.twenty()
        srv = self.probe_server(tw)
        self.post_actions(srv, {"crm": "contact_upsert", "fields": {"id": self.IDS[0], "n": "a"}},
                          phone="34600001301")
        wait_outbox(srv, 1, "crm", want=("done",), timeout=15)
        self.assertEqual(self.company_names(tw), ["v1:a"])
        tw.configure(fail_next=1, fail_status=503)
        self.post_actions(srv, {"crm": "contact_upsert", "fields": {"id": self.IDS[1], "n": "b"}},
                          phone="34600001302")
        wait_outbox(srv, 2, "crm", want=("done",), timeout=15)
        self.assertEqual(self.company_names(tw), ["v1:a", "v1:b"])
        self.assertEqual(len(tw.rest_calls("POST", "/rest/companies")), 3,
                         "a raise after a 503 is retried")
        n_calls = len(tw.rest_calls())
        self.post_actions(srv, {"crm": "contact_upsert", "fields": {"mode": "permanent"}},
                          phone="34600001303")
        self.post_actions(srv, {"crm": "contact_upsert", "fields": {"mode": "bad_path"}},
                          phone="34600001304")
        rows = wait_outbox(srv, 4, "crm", timeout=15)
        time.sleep(0.7)
        by_phone = {r["contact_key"]: r for r in outbox(srv, "crm")}
        perm = by_phone["34600001303"]
        self.assertEqual(perm["status"], "dead", "{permanent=true} is dead at once")
        self.assertIn("bad input", perm["last_error"] or "")
        bad = by_phone["34600001304"]
        self.assertEqual(bad["status"], "dead", "a plain error after a 400 is permanent")
        self.assertIn("400", bad["last_error"] or "", bad["last_error"])
        self.assertEqual(len(tw.rest_calls()), n_calls + 1, "no retries of either: %r" % [
            (c["method"], c["path"]) for c in tw.rest_calls()[n_calls:]])
        self.assertEqual(len(rows), 4)
        self.check_requests_well_formed(tw)

    def test_hot_reload_swaps_the_mapping_module(self):
        tw = self.twenty()
        srv = self.probe_server(tw)
        self.post_actions(srv, {"crm": "contact_upsert", "fields": {"id": self.IDS[0], "n": "a"}})
        wait_outbox(srv, 1, "crm", want=("done",), timeout=15)
        path = "%s/scripts/crm/probe.lua" % srv.tmp
        tmp = path + ".new"
        with open(tmp, "w") as f:
            f.write(PROBE_LUA.replace("@PREFIX@", "v2"))
        os.rename(tmp, path)
        p = srv.cli(["reload"])
        self.assertEqual(p.returncode, 0, (p.stdout + p.stderr).decode())
        self.post_actions(srv, {"crm": "contact_upsert", "fields": {"id": self.IDS[1], "n": "b"}})
        wait_outbox(srv, 2, "crm", want=("done",), timeout=15)
        self.assertEqual(self.company_names(tw), ["v1:a", "v2:b"],
                         "the deliverer's VM runs the reloaded module")


if __name__ == "__main__":
    harness.main()
