#!/usr/bin/env python3
"""Writes pre-signed, distinct Evolution API messages.upsert bodies for the benchmark.

Each output line is "<signature>\\t<compact JSON body>" where signature is
"sha256=" + hex HMAC-SHA256(secret, body). Bodies are about 1 KB, every one has a distinct
data.key.id, and they cycle through a few contacts (some addressed by phone with a LID alternate,
some by LID only) of instance "bench", as a busy bot instance would send them.

usage: gen_bodies.py --secret S --count N --out FILE [--prefix P] [--instance NAME]
"""
import argparse
import hashlib
import hmac
import json
import sys
import time

# (remoteJid, remoteJidAlt, addressingMode, pushName)
CONTACTS = [
    ("34600111222@s.whatsapp.net", "207581245931618@lid", "pn", "María López"),
    ("34600333444@s.whatsapp.net", "118237465019283@lid", "pn", "Jordi Puig"),
    ("207581245931618@lid", "34600111222@s.whatsapp.net", "lid", "María López"),
    ("5511987654321@s.whatsapp.net", "", "pn", "João Silva"),
    ("99887766554433@lid", "", "lid", "Ana"),
    ("447700900123@s.whatsapp.net", "301122334455667@lid", "pn", "Tom Baker"),
]

TEXTS = [
    "Hola, ¿tenéis cita para mañana por la mañana?",
    "Perfecto, muchas gracias. ¿A qué hora cerráis hoy?",
    "Can you send me the invoice for last month, please?",
    "Olá! Gostaria de saber o preço do pacote completo.",
    "¿Me confirmas la dirección? No encuentro el portal.",
    "ok 👍",
]


def template(instance):
    """Returns the body as a format string with {id}, {jid}, {alt}, {mode}, {name}, {text},
    {ts}, {lo}; built once through json so that the static parts are valid compact JSON."""
    body = {
        "event": "messages.upsert",
        "instance": instance,
        "data": {
            "key": {"remoteJid": "@JID@", "remoteJidAlt": "@ALT@", "fromMe": False,
                    "id": "@ID@", "participant": "", "addressingMode": "@MODE@"},
            "pushName": "@NAME@",
            "status": "DELIVERY_ACK",
            "message": {
                "conversation": "@TEXT@",
                "messageContextInfo": {
                    "deviceListMetadata": {
                        "senderKeyIndexes": [], "recipientKeyIndexes": [],
                        "senderKeyHash": {str(i): (37 * i + 11) % 256 for i in range(10)},
                        "senderTimestamp": {"low": "@LO@", "high": 0, "unsigned": True},
                    },
                    "deviceListMetadataVersion": 2,
                    "messageSecret": {str(i): (91 * i + 3) % 256 for i in range(12)},
                },
            },
            "messageType": "conversation",
            "messageTimestamp": "@TS@",
            "instanceId": "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
            "source": "android",
        },
        "destination": "http://127.0.0.1/api/whatsapp/webhook",
        "date_time": "2025-10-22T11:03:27.512Z",
        "sender": "34600999888@s.whatsapp.net",
        "server_url": "https://evo.example.com",
        "apikey": "B1E2C3D4-A5F6-4789-9ABC-DEF012345678",
    }
    t = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    t = t.replace("{", "{{").replace("}", "}}")
    for ph, name in (("@JID@", "jid"), ("@ALT@", "alt"), ("@ID@", "id"), ("@MODE@", "mode"),
                     ("@NAME@", "name"), ("@TEXT@", "text")):
        t = t.replace(ph, "{" + name + "}")
    t = t.replace('"@LO@"', "{lo}").replace('"@TS@"', "{ts}")
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secret", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prefix", default="B")
    ap.add_argument("--instance", default="bench")
    a = ap.parse_args()

    tpl = template(a.instance)
    # Pre-escape the variable strings once (they are reused across bodies).
    contacts = [tuple(json.dumps(v, ensure_ascii=False)[1:-1] for v in c) for c in CONTACTS]
    texts = [json.dumps(t, ensure_ascii=False)[1:-1] for t in TEXTS]
    key = a.secret.encode()
    prefix = a.prefix[:8].upper()
    idfmt = "%s%0" + str(32 - len(prefix)) + "X"
    proto = hmac.new(key, digestmod=hashlib.sha256)  # keyed once, copied per body
    t0 = time.monotonic()
    total = 0
    with open(a.out, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
        for i in range(a.count):
            jid, alt, mode, name = contacts[i % len(contacts)]
            body = tpl.format(id=idfmt % (prefix, i), jid=jid, alt=alt,
                              mode=mode, name=name, text=texts[(i // 7) % len(texts)],
                              ts=1761141807 + i, lo=1760881373 + i).encode()
            h = proto.copy()
            h.update(body)
            f.write("sha256=" + h.hexdigest() + "\t" + body.decode() + "\n")
            total += len(body)
    dt = time.monotonic() - t0
    sys.stderr.write("gen_bodies: %d bodies, mean %d bytes, %.1f s\n"
                     % (a.count, total // max(a.count, 1), dt))


if __name__ == "__main__":
    main()
