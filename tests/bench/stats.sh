#!/usr/bin/env bash
# Analytics benchmark (issue 6): generates a store with a year of traffic (a million messages with
# their events, facts and outbox rows; tests/bench/stats_bench.c), times wh_stats_query over 7, 30
# and 365 days and `wahook stats` (wh_cli_stats) over 30 days in-process, then the same 30 days
# through a running server's GET /api/stats and the `wahook stats` command when this build serves
# them. Target: under 200 ms for 30 days. Prints figures; a missed target is reported, not an
# error. Fails only when the tools, the library or the generator are unusable.
#
#   usage: tests/bench/stats.sh [PATH/TO/wahook]      (libwahook_core.a is taken from its directory)
#
# Knobs (environment): BENCH_STATS_MESSAGES (1000000), BENCH_STATS_DB (a path ending in
# wahook.db: the generated store is kept there and reused by later runs; default: a temporary
# one, removed), BENCH_STATS_RUNS (timed HTTP and command runs, 7).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${1:-$REPO/build/wahook}
MESSAGES=${BENCH_STATS_MESSAGES:-1000000}
RUNS=${BENCH_STATS_RUNS:-7}
ADMIN_TOKEN=bench-stats-admin-token

die() { echo "bench: $*" >&2; exit 1; }
for tool in gcc pkg-config python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (make deps installs it)"
done
[[ -x $BIN ]] || die "server binary $BIN not found or not executable (make build)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
LIB=$(dirname "$BIN")/libwahook_core.a
[[ -f $LIB ]] || die "$LIB not found (make build)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wahook-stats-bench.XXXXXX")
cd "$TMP" # nothing this script runs may leave files in the source tree
SERVER_PID=
cleanup() {
    local rc=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DB=${BENCH_STATS_DB:-$TMP/data/wahook.db}
[[ $(basename "$DB") == wahook.db ]] || die "BENCH_STATS_DB must name a file called wahook.db"
mkdir -p "$(dirname "$DB")"
DB=$(cd "$(dirname "$DB")" && pwd)/wahook.db
DATA=$(dirname "$DB")

echo "== wahook stats bench: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "   binary   $BIN"
echo "   machine  $(nproc) cores, $(uname -r); load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   store    $DB ($MESSAGES messages over a year; event bodies are short: the stats read"
echo "            only indexes, so a real store's ~1 KB bodies change its size, not these times)"

# shellcheck disable=SC2046 # pkg-config prints several words on purpose
gcc -std=gnu11 -O2 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE -DH2O_USE_LIBUV=0 \
    -I"$REPO/include" "$HERE/stats_bench.c" "$LIB" \
    $(pkg-config --cflags --libs libh2o-evloop lua5.4 lua5.4-cjson libcurl sqlite3 libssl \
        libcrypto yaml-0.1 jansson) -lpthread -lm -o "$TMP/stats_bench" ||
    die "cannot compile stats_bench.c against $LIB"
timeout 3600 "$TMP/stats_bench" "$DB" "$MESSAGES" || die "stats_bench failed"

# The range the in-process figures used: the last 30 days up to the end of the generated data.
read -r SINCE UNTIL < <(python3 - "$DB" <<'EOF'
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
last = db.execute("SELECT max(created_at) FROM messages").fetchone()[0]
until = last // 3600000 * 3600000 + 3600000
print(until - 30 * 86400000, until)
EOF
)

# ---- through the server -----------------------------------------------------------------------
read -r PORT ADMIN_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')
mkdir -p "$TMP/scripts/lib"
cp "$REPO/scripts/lib/normalize.lua" "$TMP/scripts/lib/normalize.lua"
echo 'return {}' >"$TMP/scripts/main.lua"
CONF=$TMP/wahook.conf
cat >"$CONF" <<EOF
listen:
  port: $PORT
  host: 127.0.0.1
num-threads: 2
wahook.env: production
wahook.data-dir: $DATA
wahook.scripts.dir: $TMP/scripts
wahook.store.synchronous: normal
wahook.admin:
  host: 127.0.0.1
  port: $ADMIN_PORT
hosts:
  default:
    paths:
      /api/whatsapp/webhook:
        wahook.webhook:
          auth:
            token: {secrets: [bench-stats-webhook-secret]}
EOF

echo "-- GET /api/stats and the wahook stats command over the same 30 days ($RUNS runs after one)"
(cd "$TMP" && exec env -u WAHOOK_ENV -u NODE_ENV WAHOOK_ADMIN_TOKEN="$ADMIN_TOKEN" "$BIN" serve \
    -c "$CONF") 2>"$TMP/server.log" &
SERVER_PID=$!
HEALTHY=0
for ((i = 0; i < 300; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if python3 - "$PORT" <<'EOF' 2>/dev/null; then HEALTHY=1; break; fi
import sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
    sleep 0.1
done
if [[ $HEALTHY == 1 ]]; then
    WAHOOK_ADMIN_TOKEN=$ADMIN_TOKEN timeout 600 python3 - "$ADMIN_PORT" "$ADMIN_TOKEN" "$SINCE" \
        "$UNTIL" "$RUNS" "$BIN" "$CONF" <<'EOF' || echo "   (timing through the server failed)"
import json, os, subprocess, sys, time, urllib.error, urllib.request
port, token, since, until, runs, binary, conf = sys.argv[1:8]
runs = int(runs)
url = "http://127.0.0.1:%s/api/stats?since=%s&until=%s" % (port, since, until)

def get(auth):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

def report(what, times):
    first, rest = times[0], sorted(times[1:])
    med = rest[len(rest) // 2]
    print("   %-28s first %6.1f · min %6.1f · median %6.1f · max %6.1f ms  < 200 ms: %s"
          % (what, first, rest[0], med, rest[-1], "MET" if med < 200 else "MISSED"))

status, body = get(token)
if status == 404:
    print("   GET /api/stats: skipped (this build does not serve it yet)")
else:
    times = []
    for _ in range(runs + 1):
        t = time.monotonic()
        status, body = get(token)
        times.append((time.monotonic() - t) * 1000)
        if status != 200:
            sys.exit("GET /api/stats answered %d: %s" % (status, body[:200]))
    total = json.loads(body)["messages"]["total"]
    report("GET /api/stats", times)
    print("   %-28s %d messages; without the token: %d" % ("", total, get(None)[0]))

env = dict(os.environ, WAHOOK_ADMIN_TOKEN=token)
probe = subprocess.run([binary, "stats", "--help"], capture_output=True, text=True, env=env)
if probe.returncode != 0:
    print("   wahook stats: skipped (this build has no stats command yet)")
else:
    times = []
    for _ in range(runs + 1):
        t = time.monotonic()
        r = subprocess.run([binary, "stats", "-c", conf, "--since", since, "--until", until],
                           capture_output=True, text=True, env=env, cwd=os.path.dirname(conf))
        times.append((time.monotonic() - t) * 1000)
        if r.returncode != 0:
            sys.exit("wahook stats failed (%d): %s" % (r.returncode, r.stderr[-300:]))
    report("wahook stats (process)", times)
EOF
else
    echo "   the server did not become healthy; its log:"
    tail -n 20 "$TMP/server.log" | sed 's/^/     /'
fi
if [[ -n $SERVER_PID ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
fi
echo "   load avg $(cut -d' ' -f1-3 /proc/loadavg) at the end"
