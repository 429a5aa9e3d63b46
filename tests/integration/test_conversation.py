"""A whole conversation of the DEFAULT bot (the repository's scripts/ dir) through the real
server, a stand-in Evolution and a stand-in Twenty: a buyer is qualified step by step (intent,
type, zone, budget, timing), the replies reach Evolution in order and greet the contact by its
push name, and the CRM ends up with exactly one person for the phone (named after the push
name), a note linked to that person, and a lead score above zero. The business is configured as
always open (every day 00:00-24:00 UTC, no holidays) and the debounce is short."""

import time
import unittest

import harness
import proc_helpers as ph
from harness import compact, fixture, make_conf
from standins import DeliveryCase, delivery_top

PHONE = "34600111222"
NAME = "María López"
ALL_DAY = ["00:00-24:00"]
CONFIG = {
    "hours": {"timezone": "UTC",
              "weekly": {d: ALL_DAY for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
              "holidays": []},
    "bot": {"debounce": "1s", "typing_delay_ms": 0, "max_replies_per_minute": 20},
}


class Conversation(harness.WahookTestCase, DeliveryCase):
    def post_msg(self, srv, text):
        obj = fixture("messages-upsert-text")
        key = obj["data"]["key"]
        key["id"] = self.new_mid("C")
        key["remoteJid"] = "%s@s.whatsapp.net" % PHONE
        key.pop("remoteJidAlt", None)
        obj["data"]["message"]["conversation"] = text
        obj["data"]["pushName"] = NAME
        obj["data"]["messageTimestamp"] = int(time.time())
        return ph.post(self, srv, compact(obj))

    def test_buyer_qualified_end_to_end(self):
        evo = self.evolution()
        tw = self.twenty()
        top = delivery_top(evolution=evo, twenty=tw, scripts_config=CONFIG)
        srv = self.new_server(make_conf(ph.ROUTE, top=top))  # scripts=@SCRIPTS_DIR@

        steps = ["Hola, quiero comprar un piso", "En Palma", "unos 450.000 €",
                 "lo antes posible"]
        for i, text in enumerate(steps, 1):
            self.post_msg(srv, text)
            evo.wait_sends(i, number=PHONE, timeout=12)
            time.sleep(1.2)  # a human pace: not mistaken for another bot's fast replies
        time.sleep(1.5)
        texts = evo.texts(number=PHONE)
        self.assertEqual(len(texts), 4, "one reply per message: %r" % texts)
        self.assertTrue(texts[0].startswith("¡Hola, María!"), "greeting with the push name: %r"
                        % texts[0])
        self.assertIn("Anclora Private Estates", texts[0])
        self.assertIn("¿En qué zona te interesa?", texts[0])
        self.assertEqual(texts[1], "¿Cuál es tu presupuesto aproximado?")
        self.assertEqual(texts[2], "¿Para cuándo lo necesitas?")
        self.assertTrue(texts[3].startswith("¡Gracias, María!"), texts[3])
        for part in ("Interés: comprar", "Zona: Palma", "Tipo: piso",
                     "Presupuesto: 450.000 €", "Plazo: lo antes posible"):
            self.assertIn(part, texts[3])

        # CRM: one person, named after the push name, with a linked note and a score
        def person_done():
            got = tw.people_by_phone(PHONE[2:], "+34")
            if len(got) == 1 and (got[0].get("leadScore") or 0) >= 80 and tw.notes_of(got[0]["id"]):
                return got[0]
            return None
        try:
            tw.wait_until(person_done, 20, "the person with its note and final lead score")
        except AssertionError:
            pass  # asserted in detail below
        people = tw.people_by_phone(PHONE[2:], "+34")
        self.assertEqual(len(people), 1, "exactly one person: %r" % [
            (p["id"], p.get("phones")) for p in tw.people()])
        p = people[0]
        self.assertEqual(len(tw.people()), 1, "no other person created")
        full = "%s %s" % (p["name"]["firstName"], p["name"]["lastName"])
        self.assertIn("María", full)
        self.assertIn("López", full)
        notes = tw.notes_of(p["id"])
        self.assertGreaterEqual(len(notes), 1, "a note linked to the person")
        for note, links in notes:
            self.assertEqual(links, 1, "each note linked once: %r" % note.get("title"))
        body = " ".join(str(n.get("bodyV2") or "") for n, _ in notes)
        self.assertIn("Palma", body, "the messages are in the note")
        self.assertGreater(p.get("leadScore") or 0, 0, "lead score written: %r" % p)
        self.assertEqual(p.get("leadScore"), 80, "the qualified buyer's final score")


if __name__ == "__main__":
    unittest.main()
