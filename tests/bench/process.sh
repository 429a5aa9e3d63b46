#!/usr/bin/env bash
# Processing benchmark: events processed per second by a trivial handler that queues one action,
# and the time from acknowledgement to the committed outbox row (p50/p99), with ingest running at
# the same time. Prints figures; a missed target is reported, not an error.
#
#   usage: tests/bench/process.sh [PATH/TO/wahook]
#
# Knobs: BENCH_DURATION (s of load, 5), BENCH_CONNECTIONS (64), BENCH_BODIES (60000),
# BENCH_PROCESSORS (2), BENCH_SETTING (normal).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-$HERE/../../build/wahook}
DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNECTIONS:-64}
NBODIES=${BENCH_BODIES:-60000}
PROCS=${BENCH_PROCESSORS:-2}
SETTING=${BENCH_SETTING:-normal}
SECRET=bench-secret-0123456789abcdef

for tool in wrk python3 sqlite3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is not installed" >&2; exit 1; }
done
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
[[ -x $BIN ]] || { echo "bench: $BIN not found (make build)" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wahook-pbench.XXXXXX")
cd "$TMP"
PID=
cleanup() {
    [[ -n $PID ]] && kill -KILL "$PID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(port)
ADMIN=$(port)

mkdir -p scripts/lib
cp "$HERE/../../scripts/lib/normalize.lua" scripts/lib/
cat > scripts/main.lua <<'EOF'
local wahook = require "wahook"
return {
  ["messages.upsert"] = function(ev)
    wahook.send_text(ev.msg.phone or "34600000000", "ok")
  end,
}
EOF
cat > wahook.conf <<EOF
listen:
  port: $PORT
  host: 127.0.0.1
num-threads: 2
wahook.env: production
wahook.data-dir: $TMP/data
wahook.scripts.dir: $TMP/scripts
wahook.processors: $PROCS
wahook.store.synchronous: $SETTING
wahook.admin:
  host: 127.0.0.1
  port: $ADMIN
hosts:
  default:
    paths:
      /api/whatsapp/webhook:
        wahook.webhook:
          auth:
            hmac: {secrets: [$SECRET]}
          rate-limit: {instance-per-minute: 100000000, instance-burst: 100000000}
EOF

python3 "$HERE/gen_bodies.py" --secret "$SECRET" --count "$NBODIES" --out bodies.txt --prefix P >/dev/null
"$BIN" serve -c wahook.conf 2> server.log &
PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

BENCH_THREADS=2 BENCH_BODIES="$TMP/bodies.txt" \
    wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$HERE/post.lua" \
    "http://127.0.0.1:$PORT/api/whatsapp/webhook" > wrk.txt 2>&1 || true
ingest_rps=$(awk '/Requests\/sec/ { print $2 }' wrk.txt)

# Let processing finish (bounded).
for _ in $(seq 1 600); do
    pending=$(sqlite3 "file:$TMP/data/wahook.db?mode=ro" "select count(*) from events where status='pending'" 2>/dev/null || echo 1)
    [[ $pending == 0 ]] && break
    sleep 0.1
done
kill -TERM "$PID"; wait "$PID" || true; PID=

python3 - "$TMP/data/wahook.db" "$ingest_rps" "$SETTING" "$PROCS" <<'EOF'
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
ingest, setting, procs = sys.argv[2], sys.argv[3], sys.argv[4]
done, first, last = db.execute(
    "select count(*), min(processed_at), max(processed_at) from events where status='done'").fetchone()
pending = db.execute("select count(*) from events where status != 'done'").fetchone()[0]
lat = sorted(r[0] for r in db.execute(
    "select o.created_at - e.received_at from outbox o join events e on e.id = o.event_id"))
span = max((last or 0) - (first or 0), 1) / 1000.0
def pct(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
rate = done / span
print("processing bench (%s, %s processors, trivial handler queuing one send_text):" % (setting, procs))
print("  ingest under load: %s req/s" % ingest)
print("  processed: %d events in %.2f s = %.0f events/s (not done: %d)" % (done, span, rate, pending))
print("  receipt -> committed outbox row: p50 %.0f ms, p99 %.0f ms, max %.0f ms (%d rows)" %
      (pct(0.5), pct(0.99), lat[-1] if lat else float("nan"), len(lat)))
print("  (measured from events.received_at, taken just before the ingest commit, to outbox.created_at)")
print("  target >= 10000 events/s: %s; p99 < 100 ms: %s" %
      ("MET" if rate >= 10000 else "MISSED", "MET" if lat and pct(0.99) < 100 else "MISSED"))
EOF
