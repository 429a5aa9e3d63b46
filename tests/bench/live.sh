#!/usr/bin/env bash
# Live-feed benchmark (issue 6): webhook ingest throughput with the dashboard's live feed open
# (Server-Sent Events clients reading GET /api/events/stream) versus without, on fresh servers,
# alternating the two cases (A B B A …) so that drift of the machine cancels out. Target: with the
# feed open, no more than 10% lower. Prints figures; a missed target is reported, not an error.
#
#   usage: tests/bench/live.sh [PATH/TO/wahook]
#
# Knobs (environment): BENCH_DURATION (s per run, 5), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_ROUNDS (3: each round is one run without and one with the feed), BENCH_STREAMS (feed
# clients, 1), BENCH_BODIES (distinct bodies, 200000), BENCH_SETTING (normal).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${1:-$HERE/../../build/wahook}
DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
STREAMS=${BENCH_STREAMS:-1}
NBODIES=${BENCH_BODIES:-200000}
SETTING=${BENCH_SETTING:-normal}
SECRET=bench-secret-0123456789abcdef
ADMIN_TOKEN=bench-admin-token

die() { echo "bench: $*" >&2; exit 1; }
for tool in wrk python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (make deps installs it)"
done
[[ -x $BIN ]] || die "server binary $BIN not found or not executable (make build)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wahook-live-bench.XXXXXX")
cd "$TMP" # nothing this script runs may leave files in the source tree
SERVER_PID=
READER_PIDS=()
cleanup() {
    local rc=$?
    local p
    for p in "${READER_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r PORT ADMIN_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')

echo "== wahook live-feed bench: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "   binary   $BIN"
echo "   machine  $(nproc) cores, $(uname -r); load avg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   load     wrk -t$THREADS -c$CONNS -d${DURATION}s keep-alive; synchronous=$SETTING;" \
     "$ROUNDS rounds; $STREAMS feed client(s) in the 'feed' runs"

# Scripts without handlers (normalisation and the native records still run): processing costs
# the same in both cases and stays out of the way of what is measured.
mkdir -p "$TMP/scripts/lib"
cp "$REPO/scripts/lib/normalize.lua" "$TMP/scripts/lib/"
printf 'return {}\n' >"$TMP/scripts/main.lua"

BODIES=$TMP/bodies.tsv
echo "-- generating $NBODIES pre-signed distinct messages.upsert bodies"
timeout 300 python3 "$HERE/gen_bodies.py" --secret "$SECRET" --count "$NBODIES" --out "$BODIES" \
    --prefix L 2>&1 | sed 's/^/   /'
[[ -s $BODIES ]] || die "body generation failed"

# The feed client: reads the stream as fast as it comes and counts what arrived; on SIGTERM it
# prints "events=N dropped_notices=M cut=0|1" (cut: the server closed the stream on it).
cat >"$TMP/reader.py" <<'EOF'
import signal, socket, sys
port, token, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
s.sendall(("GET /api/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
           "Accept: text/event-stream\r\n\r\n" % token).encode())
stats = {"events": 0, "dropped": 0, "cut": 0, "status": 0}
tail = b""
def finish(*_):
    with open(out, "w") as f:
        f.write("events=%(events)d dropped_notices=%(dropped)d cut=%(cut)d status=%(status)d\n" % stats)
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
first = True
while True:
    data = s.recv(1 << 20)
    if not data:
        stats["cut"] = 1
        break
    if first:
        stats["status"] = int(data.split(b" ", 2)[1])
        first = False
    buf = tail + data
    stats["events"] += buf.count(b"\nid: ") - tail.count(b"\nid: ")
    stats["dropped"] += buf.count(b"event: dropped") - tail.count(b"event: dropped")
    tail = buf[-32:]
signal.pause()
EOF

wait_healthy() {
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        if python3 - "$1" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
        sleep 0.1
    done
    return 1
}

stop_server() {
    local i rc=0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || rc=$?
    SERVER_PID=
    ((rc == 0)) || echo "   server exit status $rc"
}

proc_cpu() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# One run on a fresh server: prints "<rps> <ok> <events-received-per-client...>".
run_once() { # n, with_feed (0|1)
    local n=$1 feed=$2 conf=$TMP/wahook-$1.conf log=$TMP/server-$1.log
    cat >"$conf" <<EOF
listen:
  port: $PORT
  host: 127.0.0.1
num-threads: 2
limit-request-body: 1M
wahook.env: production
wahook.data-dir: $TMP/data-$n
wahook.store.synchronous: $SETTING
wahook.scripts.dir: $TMP/scripts
wahook.admin:
  host: 127.0.0.1
  port: $ADMIN_PORT
  token: $ADMIN_TOKEN
hosts:
  default:
    paths:
      /api/whatsapp/webhook:
        wahook.webhook:
          auth:
            hmac: {secrets: [$SECRET]}
          rate-limit: {ip-per-minute: 100, instance-per-minute: 100000000, instance-burst: 100000000}
EOF
    (cd "$TMP" && exec env -u WAHOOK_ENV -u NODE_ENV "$BIN" serve -c "$conf") 2>"$log" &
    SERVER_PID=$!
    wait_healthy "$PORT" || { tail -n 20 "$log" >&2; die "the server did not start"; }
    READER_PIDS=()
    local k
    if ((feed)); then
        for ((k = 0; k < STREAMS; k++)); do
            python3 "$TMP/reader.py" "$ADMIN_PORT" "$ADMIN_TOKEN" "$TMP/reader-$n-$k.txt" &
            READER_PIDS+=($!)
        done
        sleep 0.5 # the streams are open before the load starts
    fi
    local wrk_out=$TMP/wrk-$n.txt cpu0 cpu1
    cpu0=$(proc_cpu "$SERVER_PID")
    BENCH_THREADS=$THREADS timeout $((DURATION + 120)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" \
        --timeout 10s -s "$HERE/post.lua" "http://127.0.0.1:$PORT/api/whatsapp/webhook" \
        -- "$BODIES" >"$wrk_out" 2>&1 || { cat "$wrk_out"; die "wrk failed"; }
    cpu1=$(proc_cpu "$SERVER_PID")
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$log" >&2; die "the server died under load"; }
    sleep 1 # let the feed deliver what is still queued
    local rps ok line got=""
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$wrk_out")
    ok=$(sed -n 's/.*BENCH_POST ok=\([0-9]*\).*/\1/p' "$wrk_out")
    for k in "${!READER_PIDS[@]}"; do
        kill -TERM "${READER_PIDS[$k]}" 2>/dev/null || true
        wait "${READER_PIDS[$k]}" 2>/dev/null || true
        line=$(cat "$TMP/reader-$n-$k.txt" 2>/dev/null || echo "events=? dropped_notices=? cut=? status=?")
        got="$got [$line]"
    done
    READER_PIDS=()
    stop_server
    # Server CPU per accepted request (user + system, all threads) during the load: less
    # sensitive than req/s to other work competing for the cores.
    local us
    us=$(awk -v a="$cpu0" -v b="$cpu1" -v n="${ok:-0}" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.1f", (b - a) / hz * 1e6 / n; else print "?" }')
    echo "$rps ${ok:-?} $us$got"
}

declare -a PLAIN FEED PLAIN_US FEED_US
n=0
for ((r = 0; r < ROUNDS; r++)); do
    # A B in even rounds, B A in odd ones.
    for feed in $( ((r % 2 == 0)) && echo "0 1" || echo "1 0"); do
        n=$((n + 1))
        res=$(run_once "$n" "$feed")
        read -r rps ok us rest <<<"$res"
        if ((feed)); then
            FEED+=("$rps")
            FEED_US+=("$us")
            label="feed open"
        else
            PLAIN+=("$rps")
            PLAIN_US+=("$us")
            label="no feed"
        fi
        printf -- '-- run %d  %-9s %7s req/s, %s accepted, %s us server CPU/request %s\n' \
            "$n" "$label" "$rps" "$ok" "$us" "$rest"
    done
done

mean() { printf '%s\n' "$@" | awk '{ s += $1; n++ } END { if (n) printf "%.0f", s / n; else print 0 }'; }
meanf() { printf '%s\n' "$@" | awk '{ s += $1; n++ } END { if (n) printf "%.1f", s / n; else print 0 }'; }
A=$(mean "${PLAIN[@]}")
B=$(mean "${FEED[@]}")
A_US=$(meanf "${PLAIN_US[@]}")
B_US=$(meanf "${FEED_US[@]}")
RATIO=$(awk -v a="$A" -v b="$B" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print 0 }')
VERDICT=$(awk -v r="$RATIO" 'BEGIN { print (r >= 0.9 ? "MET" : "MISSED") }')
echo
echo "== summary (synchronous=$SETTING, $STREAMS feed client(s))"
printf '   %-22s %10s\n' "without the feed" "$A req/s"
printf '   %-22s %10s\n' "with the feed open" "$B req/s"
printf '   %-22s %10s   target >= 0.90: %s\n' "ratio" "$RATIO" "$VERDICT"
printf '   %-22s %10s us without, %s us with the feed (%s)\n' "server CPU/request" "$A_US" "$B_US" \
    "$(awk -v a="$A_US" -v b="$B_US" 'BEGIN { if (a > 0) printf "%+.1f%%", (b - a) / a * 100 }')"
echo "   (each figure is the mean of $ROUNDS fresh-server runs; compare within one run only)"
