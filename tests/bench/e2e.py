#!/usr/bin/env python3
"""End-to-end delivery benchmark (issue 4): the time from the webhook POST to the sendText
request arriving at a stand-in Evolution API, at a fixed offered rate, and the sustained
deliveries per second to a fast local sink. Prints figures; a missed target is reported, not an
error. Fails only when the server does not start or delivers nothing.

  usage: tests/bench/e2e.py [PATH/TO/wahook]          (the last step of tests/bench/run.sh)

Pacing is lifted for the bench: wahook.evolution.rate-per-minute 1000000, burst 100000,
concurrency 64 by default (the production defaults, 60/min with a burst of 10, protect a WhatsApp number
and would make this a measurement of the limiter).

The sink is an asyncio HTTP/1.1 server in its own process (keep-alive, a canned 201 send.message
answer, the arrival time of every sendText taken with CLOCK_MONOTONIC, which is shared between
processes on Linux). The posters are threads on keep-alive connections that send on a fixed
schedule (open loop); latency = sink arrival - the moment the POST was written.

Knobs (environment): BENCH_E2E_RATE (events/s, 1000), BENCH_E2E_SECS (10), BENCH_E2E_DRAIN
(rows queued for the drain measurement, 10000), BENCH_E2E_POSTERS (threads, 8),
BENCH_E2E_CONTACTS (distinct contacts, 500), BENCH_E2E_SETTING (store synchronous, normal),
BENCH_E2E_CONCURRENCY (wahook.evolution.concurrency, 64), BENCH_E2E_TIMELINE (1: print posted /
committed / delivered per second).
"""

import asyncio
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.abspath(os.path.join(HERE, "..", ".."))
TOKEN = "e2e-bench-token-5b1c"
RATE = int(os.environ.get("BENCH_E2E_RATE", "1000"))
SECS = float(os.environ.get("BENCH_E2E_SECS", "10"))
DRAIN = int(os.environ.get("BENCH_E2E_DRAIN", "10000"))
POSTERS = int(os.environ.get("BENCH_E2E_POSTERS", "8"))
CONTACTS = int(os.environ.get("BENCH_E2E_CONTACTS", "500"))
CONCURRENCY = int(os.environ.get("BENCH_E2E_CONCURRENCY", "64"))
SETTING = os.environ.get("BENCH_E2E_SETTING", "normal")

MAIN_LUA = """local wahook = require "wahook"
local h = {}
-- echo the text back: the bench's key to match a delivery with its POST
h["messages.upsert"] = function(ev)
  local m = ev.msg
  if m and m.phone and m.text and not m.from_me then wahook.send_text(m.phone, m.text) end
end
return h
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---------------------------------------------------------------------------------------------
# the sink (own process)


def sink_main(port, ready):
    arrivals = []  # (monotonic, text)
    counter = [0]

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                n = 0
                for ln in lines[1:]:
                    if ln[:15].lower() == b"content-length:":
                        n = int(ln[15:].strip())
                body = await reader.readexactly(n) if n else b""
                t = time.monotonic()
                wall = time.time()
                if path.startswith(b"/message/sendText/"):
                    try:
                        text = json.loads(body)["text"]
                    except (ValueError, KeyError, TypeError):
                        text = None
                    arrivals.append((t, text, wall))
                    counter[0] += 1
                    out = ('{"key":{"remoteJid":"x@s.whatsapp.net","fromMe":true,"id":"3EB0%018X"},'
                           '"status":"PENDING","messageType":"conversation",'
                           '"messageTimestamp":%d}' % (counter[0], int(time.time()))).encode()
                    status = b"201 Created"
                elif path.startswith(b"/instance/connectionState/"):
                    out = b'{"instance":{"instanceName":"acme-bot","state":"open"}}'
                    status = b"200 OK"
                elif path == b"/_dump":
                    out = json.dumps(arrivals).encode()
                    status = b"200 OK"
                elif path == b"/_reset":
                    arrivals.clear()
                    out = b"{}"
                    status = b"200 OK"
                elif path == b"/_count":
                    out = str(len(arrivals)).encode()
                    status = b"200 OK"
                else:
                    out = b"{}"
                    status = b"404 Not Found"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
        ready.set()
        async with srv:
            await srv.serve_forever()

    asyncio.run(main())  # ends with SIGTERM (default action: a quiet exit)


def sink_get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=30) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------------------------------------
# bodies and posting


def body(mid, phone, text):
    obj = {"event": "messages.upsert", "instance": "acme-bot",
           "data": {"key": {"remoteJid": "%s@s.whatsapp.net" % phone, "fromMe": False,
                            "id": mid, "participant": "", "addressingMode": "pn"},
                    "pushName": "Bench", "status": "DELIVERY_ACK",
                    "message": {"conversation": text}, "messageType": "conversation",
                    "messageTimestamp": int(time.time()), "source": "android"},
           "destination": "http://127.0.0.1/hook", "date_time": "2026-01-01T00:00:00.000Z",
           "sender": "34600999888@s.whatsapp.net", "server_url": "http://127.0.0.1",
           "apikey": None}
    return json.dumps(obj, separators=(",", ":")).encode()


def phone_of(i):
    return "3461%07d" % (i % CONTACTS)


class Poster:
    """Posts items (tag, body) on a schedule: item k of the whole run is due at t0 + k / rate
    (rate None: as fast as possible). Records the send time of every tag."""

    def __init__(self, port, items, rate, threads):
        self.port = port
        self.items = items
        self.rate = rate
        self.sent = {}
        self.acked = {}
        self.sent_wall = {}
        self.non200 = 0
        self.errors = []
        self.max_lag = 0.0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(k, threads), daemon=True)
                        for k in range(threads)]

    def start(self):
        self.t0 = time.monotonic() + 0.2
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout):
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, end - time.monotonic()))

    def run(self, k, n):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent, acked, walls, lag, non200 = {}, {}, {}, 0.0, 0
        try:
            for idx in range(k, len(self.items), n):
                tag, b = self.items[idx]
                if self.rate:
                    due = self.t0 + idx / self.rate
                    d = due - time.monotonic()
                    if d > 0:
                        time.sleep(d)
                    else:
                        lag = max(lag, -d)
                t = time.monotonic()
                walls[tag] = time.time()
                conn.request("POST", "/api/whatsapp/webhook", body=b,
                             headers={"Content-Type": "application/json",
                                      "x-webhook-token": TOKEN})
                r = conn.getresponse()
                r.read()
                acked[tag] = time.monotonic()
                if r.status != 200:
                    non200 += 1
                sent[tag] = t
        except (OSError, http.client.HTTPException) as e:
            with self.lock:
                self.errors.append(repr(e))
        finally:
            conn.close()
            with self.lock:
                self.sent.update(sent)
                self.acked.update(acked)
                self.sent_wall.update(walls)
                self.non200 += non200
                self.max_lag = max(self.max_lag, lag)


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


# ---------------------------------------------------------------------------------------------


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                             os.path.join(SOURCE_DIR, "build", "wahook"))
    if not os.access(binary, os.X_OK):
        sys.exit("e2e: %s not found (make build)" % binary)
    tmp = tempfile.mkdtemp(prefix="wahook-e2e-")
    proc = None
    sink = None
    try:
        sink_port = free_port()
        ready = multiprocessing.Event()
        sink = multiprocessing.Process(target=sink_main, args=(sink_port, ready), daemon=True)
        sink.start()
        if not ready.wait(10):
            sys.exit("e2e: the sink did not start")

        port, admin = free_port(), free_port()
        os.makedirs(os.path.join(tmp, "scripts", "lib"))
        shutil.copyfile(os.path.join(SOURCE_DIR, "scripts", "lib", "normalize.lua"),
                        os.path.join(tmp, "scripts", "lib", "normalize.lua"))
        with open(os.path.join(tmp, "scripts", "main.lua"), "w") as f:
            f.write(MAIN_LUA)
        conf = os.path.join(tmp, "wahook.conf")
        with open(conf, "w") as f:
            f.write("""listen:
  port: %d
  host: 127.0.0.1
num-threads: 2
wahook.env: production
wahook.data-dir: %s/data
wahook.scripts.dir: %s/scripts
wahook.store.synchronous: %s
wahook.admin:
  host: 127.0.0.1
  port: %d
wahook.evolution:
  url: http://127.0.0.1:%d
  api-key: bench-key
  rate-per-minute: 1000000
  burst: 100000
  concurrency: %d
wahook.watchdog.interval: 0
hosts:
  default:
    paths:
      /api/whatsapp/webhook:
        wahook.webhook:
          auth:
            token: {secrets: [%s]}
          rate-limit: {ip-per-minute: 100000, instance-per-minute: 100000000, instance-burst: 100000000}
""" % (port, tmp, tmp, SETTING, admin, sink_port, CONCURRENCY, TOKEN))
        log = open(os.path.join(tmp, "server.log"), "wb")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        proc = subprocess.Popen([binary, "serve", "-c", conf], cwd=tmp, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, env=env)
        for _ in range(200):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        else:
            sys.exit("e2e: the server did not become healthy")
        if proc.poll() is not None:
            sys.exit("e2e: the server exited (%d):\n%s" % (proc.returncode, open(
                os.path.join(tmp, "server.log")).read()[-2000:]))

        print()
        print("== e2e delivery: webhook POST -> sendText at a stand-in Evolution API (127.0.0.1)")
        print("   pacing lifted for the bench: evolution rate-per-minute 1000000, burst 100000, "
              "concurrency %d; store synchronous=%s; %d contacts; handler: one send_text per "
              "message" % (CONCURRENCY, SETTING, CONTACTS))
        with open("/proc/loadavg") as f:
            print("   load avg %s before the run, %d cores (the posters, the sink and the server "
                  "share them; other work on this machine skews every figure)" % (
                      " ".join(f.read().split()[:3]), os.cpu_count() or 0))

        # ---- 1. latency at a fixed offered rate
        n = int(RATE * SECS)
        items = []
        for i in range(n):
            tag = "L%07d" % i
            items.append((tag, body("E2EL%012d" % i, phone_of(i), tag)))
        p = Poster(port, items, RATE, POSTERS).start()
        p.join(SECS + 120)
        post_secs = time.monotonic() - p.t0
        deadline = time.monotonic() + 30
        got = 0
        for _ in range(600):
            got = sink_get(sink_port, "/_count")
            if got >= len(p.sent) or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.05)
        arrivals = sink_get(sink_port, "/_dump")
        first = {}
        first_wall = {}
        for t, text, wall in arrivals:
            if text not in first:
                first[text] = t
                first_wall[text] = wall
        lat = sorted((first[tag] - ts) * 1000.0 for tag, ts in p.sent.items() if tag in first)
        print("-- latency: offered %d ev/s for %.0f s with %d posting threads" % (RATE, SECS,
                                                                                 POSTERS))
        print("   posted %d in %.1f s (%.0f/s achieved; max behind schedule %.0f ms; non-200 %d%s)"
              % (len(p.sent), post_secs, len(p.sent) / max(post_secs, 1e-9),
                 p.max_lag * 1000, p.non200, "; errors: %s" % p.errors[:2] if p.errors else ""))
        print("   delivered %d of %d (%d duplicate sendText calls)" % (
            len(lat), len(p.sent), len(arrivals) - len(first)))
        if lat:
            p99 = pct(lat, 99)
            print("   POST -> sendText ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f" % (
                pct(lat, 50), pct(lat, 90), p99, lat[-1]))
            ack = sorted((p.acked[tag] - ts) * 1000.0 for tag, ts in p.sent.items()
                         if tag in p.acked)
            after = sorted((first[tag] - p.acked[tag]) * 1000.0 for tag in p.sent
                           if tag in first and tag in p.acked)
            print("   of which POST -> 200 ms: p50 %.1f  p99 %.1f; 200 -> sendText ms: p50 %.1f  "
                  "p99 %.1f (a sendText may arrive before the 200 is read: negative)" % (
                      pct(ack, 50), pct(ack, 99), pct(after, 50), pct(after, 99)))
            # where the time goes, from the store's own timestamps (wall clock, ms)
            db = sqlite3.connect("file:%s/data/wahook.db?mode=ro" % tmp, uri=True, timeout=10)
            try:
                rows = db.execute("SELECT dedup_id, processed_at FROM events WHERE dedup_id "
                                  "LIKE 'E2EL%'").fetchall()
            finally:
                db.close()
            proc_at = {"L%07d" % int(d[4:]): pa for d, pa in rows if pa}
            to_proc = sorted(proc_at[t] - p.sent_wall[t] * 1000.0 for t in p.sent_wall
                             if t in proc_at)
            to_sink = sorted(first_wall[t] * 1000.0 - proc_at[t] for t in proc_at
                             if t in first_wall)
            if to_proc and to_sink:
                print("   POST -> handler committed ms: p50 %.1f  p99 %.1f; committed -> sendText "
                      "ms: p50 %.1f  p99 %.1f" % (pct(to_proc, 50), pct(to_proc, 99),
                                                   pct(to_sink, 50), pct(to_sink, 99)))
            if os.environ.get("BENCH_E2E_TIMELINE") == "1":
                base = min(p.sent_wall.values())
                buckets = {}
                for what, vals in (("posted", [v * 1000.0 for v in p.sent_wall.values()]),
                                   ("committed", list(proc_at.values())),
                                   ("delivered", [v * 1000.0 for v in first_wall.values()])):
                    for v in vals:
                        k = int((v - base * 1000.0) // 1000)
                        buckets.setdefault(k, {}).setdefault(what, 0)
                        buckets[k][what] += 1
                print("   per second:  s  posted  committed  delivered")
                for k in sorted(buckets):
                    b_ = buckets[k]
                    print("             %3d  %6d  %9d  %9d" % (k, b_.get("posted", 0),
                                                           b_.get("committed", 0),
                                                           b_.get("delivered", 0)))
            print("   target p99 < 100 ms end to end: %s" % ("MET" if p99 < 100 else "MISSED"))
        if not lat:
            print("e2e: nothing was delivered; server log tail:\n" +
                  open(os.path.join(tmp, "server.log")).read()[-2000:])
            return 1

        # ---- 2. sustained deliveries: queue DRAIN rows while the instance is close, then open
        sink_get(sink_port, "/_reset")
        ctrl = [("close", json.dumps({"event": "connection.update", "instance": "acme-bot",
                                       "data": {"instance": "acme-bot", "state": "close",
                                                "statusReason": 401},
                                       "date_time": "2026-01-01T00:00:01.000Z"}).encode())]
        Poster(port, ctrl, None, 1).start().join(10)
        db = os.path.join(tmp, "data", "wahook.db")
        time.sleep(2.0)  # deliverers re-read connection states about once a second
        items = [("D%07d" % i, body("E2ED%012d" % i, phone_of(i), "D%07d" % i))
                 for i in range(DRAIN)]
        t_fill = time.monotonic()
        Poster(port, items, None, POSTERS).start().join(300)
        pending = 0
        for _ in range(3000):
            c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
            try:
                pending, queued = c.execute(
                    "SELECT sum(o.status = 'pending'), count(*) FROM outbox o JOIN events e "
                    "ON e.id = o.event_id WHERE o.target = 'evolution' AND e.dedup_id LIKE "
                    "'E2ED%'").fetchone()
                pending = pending or 0
            finally:
                c.close()
            if queued >= DRAIN or time.monotonic() - t_fill > 300:
                break
            time.sleep(0.1)
        early = sink_get(sink_port, "/_count")
        print("-- sustained deliveries to a fast local sink")
        print("   %d rows queued while the instance was close (%.1f s to ingest and process; "
              "%d sent meanwhile)" % (pending, time.monotonic() - t_fill, early))
        opened = [("open", json.dumps({"event": "connection.update", "instance": "acme-bot",
                                        "data": {"instance": "acme-bot", "state": "open",
                                                 "statusReason": 200},
                                        "date_time": "2026-01-01T00:00:02.000Z"}).encode())]
        t_open = time.monotonic()
        Poster(port, opened, None, 1).start().join(10)
        want = pending
        deadline = time.monotonic() + 300
        cnt = 0
        for _ in range(30000):
            cnt = sink_get(sink_port, "/_count")
            if cnt >= want or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.05)
        arr = sorted(a[0] for a in sink_get(sink_port, "/_dump"))
        if len(arr) >= 10:
            total = arr[-1] - t_open
            lo, hi = arr[len(arr) // 10], arr[len(arr) * 9 // 10]
            steady = (len(arr) * 8 // 10) / max(hi - lo, 1e-9)
            print("   drained %d in %.2f s after the open event -> %.0f deliveries/s overall, "
                  "%.0f/s steady (10%%-90%%)" % (len(arr), total, len(arr) / max(total, 1e-9),
                                                 steady))
        else:
            print("   drained only %d of %d within 300 s" % (len(arr), want))
        rss = "?"
        try:
            with open("/proc/%d/status" % proc.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        rss = "%.1f MB" % (int(line.split()[1]) / 1024.0)
        except OSError:
            pass
        print("   server peak RSS %s" % rss)
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if sink is not None:
            sink.terminate()
            sink.join(5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
