#!/usr/bin/env bash
# wahook benchmark: webhook ingest vs the HTTP ceiling (/healthz) vs the storage ceiling (raw
# SQLite group commit on the same disk), for synchronous=normal and synchronous=full.
# Prints figures; a missed target is reported, not an error. Fails only when the tools or the
# server are unusable.
#
#   usage: tests/bench/run.sh [PATH/TO/wahook]        (make bench)
#
# Knobs (environment): BENCH_DURATION (s, 5), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_BODIES (distinct bodies, 300000), BENCH_CEILING_SECS (3), BENCH_BATCH (512),
# BENCH_SETTINGS ("normal full"), BENCH_PERF (1: count the store writer's commits with perf).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-$HERE/../../build/wahook}
DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
NBODIES=${BENCH_BODIES:-300000}
CEIL_SECS=${BENCH_CEILING_SECS:-3}
CEIL_MAX_ROWS=1000000
BATCH=${BENCH_BATCH:-512}
SETTINGS=${BENCH_SETTINGS:-normal full}
USE_PERF=${BENCH_PERF:-1}
SECRET=bench-secret-0123456789abcdef
CEIL_BATCHES="1 12 64 $BATCH"

die() { echo "bench: $*" >&2; exit 1; }

for tool in wrk python3 gcc pkg-config timeout; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (make deps installs it)"
done
pkg-config --exists sqlite3 || die "pkg-config cannot find sqlite3 (libsqlite3-dev)"
[[ -x $BIN ]] || die "server binary $BIN not found or not executable (make build)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
case $BATCH in 1|12|64) CEIL_BATCHES="1 12 64 512" ;; esac
PERF_OK=0
if [[ $USE_PERF == 1 ]] && command -v perf >/dev/null 2>&1 &&
    perf stat -x, -e syscalls:sys_enter_fcntl -o /dev/null true >/dev/null 2>&1; then
    PERF_OK=1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wahook-bench.XXXXXX")
cd "$TMP" # nothing this script runs may leave files in the source tree
# The ingest figures measure ingest: the scripts have no handler, so processing only marks
# events done (tests/bench/process.sh measures handlers).
mkdir -p "$TMP/scripts"
echo 'return {}' > "$TMP/scripts/main.lua"
SERVER_PID=
PERF_PID=
cleanup() {
    local rc=$?
    [[ -n $PERF_PID ]] && kill -INT "$PERF_PID" 2>/dev/null || true
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two free ports on 127.0.0.1 (the kernel picks them; a tiny race is acceptable for a bench).
read -r PORT ADMIN_PORT < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')

# Same disk for the server's data-dir and the SQLite ceiling: both live under $TMP.
DISK=$(df -P "$TMP" | awk 'NR==2 {print $1}')
FSTYPE=$(findmnt -n -o FSTYPE -T "$TMP" 2>/dev/null || echo "?")
echo "== wahook bench: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "   binary   $BIN"
echo "   machine  $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "   disk     $TMP on $DISK ($FSTYPE) — server data-dir and SQLite ceiling share it"
echo "   load     wrk -t$THREADS -c$CONNS -d${DURATION}s keep-alive, 127.0.0.1:$PORT; batch-size $BATCH"
echo "   sqlite   $(pkg-config --modversion sqlite3) (ceiling: WAL, events-shaped table, $CEIL_SECS s per batch size)"
echo "   load avg $(cut -d' ' -f1-3 /proc/loadavg) before the run (other work on this machine skews every figure)"

# --- build the ceiling and the bodies ------------------------------------------------------
gcc -O2 -Wall -Wextra -o "$TMP/sqlite_ceiling" "$HERE/sqlite_ceiling.c" \
    $(pkg-config --cflags --libs sqlite3) || die "cannot compile sqlite_ceiling.c"
BODIES=$TMP/bodies.tsv
echo "-- generating $NBODIES pre-signed distinct messages.upsert bodies"
timeout 300 python3 "$HERE/gen_bodies.py" --secret "$SECRET" --count "$NBODIES" --out "$BODIES" \
    --prefix B 2>&1 | sed 's/^/   /'
[[ -s $BODIES ]] || die "body generation failed"

# --- helpers --------------------------------------------------------------------------------
# wrk latency "123.45us" / "1.23ms" / "1.02s" / "1.5m" -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}
wrk_field() { # file, what: rps | p50 | p99 | requests | errors
    case $2 in
        rps) awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$1" ;;
        p50) to_ms "$(awk '$1 == "50%" {print $2}' "$1")" ;;
        p99) to_ms "$(awk '$1 == "99%" {print $2}' "$1")" ;;
        requests) awk '/requests in/ {print $1}' "$1" ;;
        errors) awk '/Socket errors:|Non-2xx/ {print}' "$1" | tr '\n' ' ' ;;
    esac
}
wait_healthy() { # port
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
    local i
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "   server did not stop within 15 s of SIGTERM; killing it"
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    local rc=0
    wait "$SERVER_PID" 2>/dev/null || rc=$?
    SERVER_PID=
    echo "   server exit status $rc"
}
server_alive_or_die() { # what was running
    kill -0 "$SERVER_PID" 2>/dev/null && return 0
    local rc=0
    wait "$SERVER_PID" 2>/dev/null || rc=$?
    SERVER_PID=
    echo "bench: the server died during $1 (exit status $rc$( ((rc > 128)) && echo ", signal $((rc - 128))")); last log lines:" >&2
    tail -n 10 "$LOG" >&2 || true
    exit 1
}
# CPU ticks: "total busy" of the machine from /proc/stat, and "tid ticks" per server thread.
machine_ticks() { awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $2+$3+$4+$7+$8+$9 }' /proc/stat; }
thread_ticks() {
    local t
    for t in /proc/"$SERVER_PID"/task/*; do
        awk -v t="${t##*/}" '{ sub(/^.*\) /, ""); print t, $12 + $13 }' "$t/stat" 2>/dev/null || true
    done
}
# Server CPU between two thread_ticks snapshots: total, per busy thread, and per request.
cpu_report() { # before, after, writer tid, requests
    awk -v hz="$(getconf CLK_TCK)" -v secs="$DURATION" -v w="$3" -v n="$4" '
        NR == FNR { b[$1] = $2; next }
        { d = ($2 - b[$1]) / hz; tot += d; if (d > 0.05 * secs) {
            parts = parts sprintf("%s%s%s %.0f%%", parts ? ", " : "", $1, ($1 == w ? "(writer)" : ""), 100 * d / secs) } }
        END { per = 0; if (n + 0 > 0) per = 1e6 * tot / n
              printf "%.0f%% of one core [%s], %.0f us CPU per request", 100 * tot / secs, parts, per }' "$1" "$2"
}
ceiling() { # setting, out-file, batches...
    local setting=$1 out=$2
    shift 2
    timeout $((CEIL_SECS * $# + 60)) "$TMP/sqlite_ceiling" "$TMP/ceiling" "$setting" "$CEIL_SECS" \
        "$CEIL_MAX_ROWS" "$BODIES" "$@" | tee -a "$out" | sed 's/^/   /'
}
ceiling_rate() { # file, batch -> mean rows/s over the runs recorded in file
    awk -v b="$2" '$0 ~ "batch=" b " " { for (i = 1; i <= NF; i++) if ($i ~ /^rows_per_s=/) {
        sub(/rows_per_s=/, "", $i); s += $i; n++ } } END { if (n) printf "%.0f", s / n; else print 0 }' "$1"
}
ceiling_runs() { # file, batch -> "a / b" of the individual runs
    awk -v b="$2" '$0 ~ "batch=" b " " { for (i = 1; i <= NF; i++) if ($i ~ /^rows_per_s=/) {
        sub(/rows_per_s=/, "", $i); r = r (r ? " / " : "") $i } } END { print r }' "$1"
}

# Calibration for the commit estimate: SQLite takes a fixed number of fcntl locks per write
# transaction in WAL mode; measure it on the ceiling (known commit count) and apply it to the
# server's writer thread. Under FULL every commit also fdatasyncs the WAL once.
calibrate_fcntl() { # setting -> fcntl calls per commit
    local f=$TMP/cal.perf
    timeout 30 perf stat -x, -o "$f" -e syscalls:sys_enter_fcntl \
        "$TMP/sqlite_ceiling" "$TMP/ceiling" "$1" 0.5 20000 "$BODIES" 64 >"$TMP/cal.out"
    awk -F, -v rows="$(sed -n 's/.* rows=\([0-9]*\).*/\1/p' "$TMP/cal.out")" \
        '$3 ~ /sys_enter_fcntl/ { printf "%.3f", $1 / (rows / 64) }' "$f"
}

mkdir -p "$TMP/ceiling"
declare -A R

for setting in $SETTINGS; do
    echo
    echo "== synchronous=$setting"
    CEIL=$TMP/ceiling-$setting.txt
    : >"$CEIL"

    # 1. storage ceiling, first pass (before the server touches the disk)
    echo "-- storage ceiling: raw SQLite group commit, 1 KB rows"
    ceiling "$setting" "$CEIL" $CEIL_BATCHES

    # 2. server
    DATA=$TMP/data-$setting
    CONF=$TMP/wahook-$setting.conf
    LOG=$TMP/server-$setting.log
    cat >"$CONF" <<EOF
listen:
  port: $PORT
  host: 127.0.0.1
num-threads: 2
limit-request-body: 1M
wahook.env: production
wahook.data-dir: $DATA
wahook.scripts.dir: $TMP/scripts
wahook.store.synchronous: $setting
wahook.store.batch-size: $BATCH
wahook.admin:
  host: 127.0.0.1
  port: $ADMIN_PORT
hosts:
  default:
    paths:
      /api/whatsapp/webhook:
        wahook.webhook:
          auth:
            hmac: {secrets: [$SECRET]}
          rate-limit: {ip-per-minute: 100, instance-per-minute: 100000000, instance-burst: 100000000}
EOF
    # cwd = $TMP so that no stray .env is read; no inherited WAHOOK_* settings leak in either.
    (cd "$TMP" && exec env -u WAHOOK_ENV -u NODE_ENV "$BIN" serve -c "$CONF") 2>"$LOG" &
    SERVER_PID=$!
    if ! wait_healthy "$PORT"; then
        echo "bench: the server did not become healthy on 127.0.0.1:$PORT within 10 s; its log:" >&2
        tail -n 30 "$LOG" >&2 || true
        exit 1
    fi
    RSS_IDLE=$(awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$SERVER_PID/status")
    echo "-- server pid $SERVER_PID healthy; idle RSS $RSS_IDLE MB"

    # 3. webhook load (optionally with the writer's syscalls counted)
    PERF_OUT=$TMP/perf-$setting.csv
    if [[ $PERF_OK == 1 ]]; then
        perf stat -x, --per-thread -o "$PERF_OUT" \
            -e syscalls:sys_enter_fcntl,syscalls:sys_enter_fdatasync -p "$SERVER_PID" &
        PERF_PID=$!
    fi
    echo "-- webhook: POST /api/whatsapp/webhook (HMAC-signed, distinct bodies)"
    WRK_HOOK=$TMP/wrk-hook-$setting.txt
    thread_ticks >"$TMP/ticks0"
    read -r M0_ALL M0_BUSY < <(machine_ticks)
    BENCH_THREADS=$THREADS timeout $((DURATION + 120)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" \
        --timeout 10s --latency -s "$HERE/post.lua" "http://127.0.0.1:$PORT/api/whatsapp/webhook" \
        -- "$BODIES" >"$WRK_HOOK" 2>&1 || { cat "$WRK_HOOK"; die "wrk failed on the webhook"; }
    read -r M1_ALL M1_BUSY < <(machine_ticks)
    thread_ticks >"$TMP/ticks1"
    if [[ -n $PERF_PID ]]; then
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=
    fi
    sed 's/^/   /' "$WRK_HOOK"
    server_alive_or_die "the webhook load"
    # Where the CPU went during the webhook run (wrk runs on the same cores).
    WRITER_TID=
    if [[ $PERF_OK == 1 && -s $PERF_OUT ]]; then
        WRITER_TID=$(awk -F, '$4 ~ /sys_enter_fcntl/ && $2 + 0 > m { m = $2 + 0; t = $1 }
            END { n = split(t, a, "-"); print a[n] }' "$PERF_OUT")
    fi
    SERVER_CPU=$(cpu_report "$TMP/ticks0" "$TMP/ticks1" "$WRITER_TID" "$(wrk_field "$WRK_HOOK" requests)")
    MACHINE_BUSY=$(awk -v a="$((M1_ALL - M0_ALL))" -v b="$((M1_BUSY - M0_BUSY))" \
        'BEGIN { if (a > 0) printf "%.0f%%", 100 * b / a; else print "?" }')
    echo "   cpu: machine $MACHINE_BUSY busy ($(nproc) cores); server $SERVER_CPU"

    # 4. HTTP ceiling on the same server
    echo "-- HTTP ceiling: GET /healthz"
    WRK_HZ=$TMP/wrk-hz-$setting.txt
    thread_ticks >"$TMP/ticks0"
    timeout $((DURATION + 60)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency \
        "http://127.0.0.1:$PORT/healthz" >"$WRK_HZ" 2>&1 || { cat "$WRK_HZ"; die "wrk failed on /healthz"; }
    thread_ticks >"$TMP/ticks1"
    sed 's/^/   /' "$WRK_HZ"
    server_alive_or_die "the /healthz load"
    HZ_CPU=$(cpu_report "$TMP/ticks0" "$TMP/ticks1" "" "$(wrk_field "$WRK_HZ" requests)")
    echo "   cpu: server $HZ_CPU"

    # 5. peak RSS, stop, sanity check of the stored rows
    RSS_PEAK=$(awk '/^VmHWM:/ {printf "%.1f", $2/1024}' "/proc/$SERVER_PID/status")
    echo "-- peak RSS (VmHWM) $RSS_PEAK MB; stopping the server"
    stop_server
    ROWS=$(python3 - "$DATA/wahook.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
print(db.execute("SELECT count(*) FROM events").fetchone()[0])
EOF
) || ROWS="?"
    OK200=$(sed -n 's/^BENCH_POST ok=\([0-9]*\).*/\1/p' "$WRK_HOOK")
    NON200=$(sed -n 's/^BENCH_POST .*non200=\([0-9]*\).*/\1/p' "$WRK_HOOK")
    REPEATS=$(sed -n 's/^BENCH_POST .*repeats=\([0-9]*\).*/\1/p' "$WRK_HOOK")
    CODES=$(sed -n 's/^BENCH_POST .*codes=\(.*\)$/\1/p' "$WRK_HOOK")
    SANITY=ok
    if [[ $ROWS == "?" || -z $OK200 ]] || ((ROWS < OK200 - REPEATS || ROWS > OK200 + CONNS)); then
        SANITY=MISMATCH
    fi
    echo "   sanity: $OK200 answered 200, $ROWS rows stored ($SANITY: expect 200s-repeats <= rows <= 200s+$CONNS in flight at wrk's stop)"
    if grep -q '"level":"error"' "$LOG"; then
        echo "   server logged errors:"; grep '"level":"error"' "$LOG" | head -n 5 | sed 's/^/     /'
    fi

    # 6. storage ceiling, second pass at the batch sizes compared (the disk is noisy)
    echo "-- storage ceiling again (after the server run) for 64 and $BATCH"
    if [[ $BATCH == 64 ]]; then ceiling "$setting" "$CEIL" 64 512; else ceiling "$setting" "$CEIL" 64 "$BATCH"; fi

    # commits the server's writer made, estimated from its syscalls
    AVG_BATCH=n/a
    if [[ $PERF_OK == 1 && -s $PERF_OUT ]]; then
        FPC=$(calibrate_fcntl "$setting" 2>/dev/null || true)
        read -r W_FCNTL W_SYNC < <(awk -F, '
            $4 ~ /sys_enter_fcntl/ { f[$1] = $2 } $4 ~ /sys_enter_fdatasync/ { s[$1] = $2 }
            END { best = ""; for (t in f) if (best == "" || f[t] + 0 > f[best] + 0) best = t
                  print (best == "" ? 0 : f[best]), (best == "" ? 0 : s[best] + 0) }' "$PERF_OUT")
        REQS=$(wrk_field "$WRK_HOOK" requests)
        if [[ -n $FPC && ${W_FCNTL:-0} -gt 0 ]]; then
            AVG_BATCH=$(awk -v r="$REQS" -v f="$W_FCNTL" -v k="$FPC" 'BEGIN { printf "%.1f", r / (f / k) }')
            echo "   writer: $W_FCNTL fcntl at $FPC per commit (calibrated on the ceiling) for $REQS requests -> mean batch ≈ $AVG_BATCH"
        fi
        if [[ $setting == full && ${W_SYNC:-0} -gt 0 ]]; then
            # FULL syncs the WAL on every commit: the exact count (checkpoints add a few).
            AVG_BATCH=$(awk -v r="$REQS" -v c="$W_SYNC" 'BEGIN { printf "%.1f", r / c }')
            echo "   writer: $W_SYNC fdatasync (≈ commits) for $REQS requests -> mean batch ≈ $AVG_BATCH"
        fi
    fi
    # The storage ceiling at the batch size the server actually reached.
    R[$setting.cM]=n/a
    if [[ $AVG_BATCH != n/a ]]; then
        MB=$(awk -v b="$AVG_BATCH" 'BEGIN { b = int(b + 0.5); print (b < 1 ? 1 : b) }')
        echo "-- storage ceiling at the server's measured batch ($MB)"
        ceiling "$setting" "$TMP/ceiling-m-$setting.txt" "$MB"
        R[$setting.cM]=$(ceiling_rate "$TMP/ceiling-m-$setting.txt" "$MB")
        R[$setting.mb]=$MB
    fi

    R[$setting.rps]=$(wrk_field "$WRK_HOOK" rps)
    R[$setting.p50]=$(wrk_field "$WRK_HOOK" p50)
    R[$setting.p99]=$(wrk_field "$WRK_HOOK" p99)
    R[$setting.hz]=$(wrk_field "$WRK_HZ" rps)
    R[$setting.hzp99]=$(wrk_field "$WRK_HZ" p99)
    R[$setting.c1]=$(ceiling_rate "$CEIL" 1)
    R[$setting.c12]=$(ceiling_rate "$CEIL" 12)
    R[$setting.c64]=$(ceiling_rate "$CEIL" 64)
    R[$setting.cB]=$(ceiling_rate "$CEIL" "$BATCH")
    R[$setting.c64runs]=$(ceiling_runs "$CEIL" 64)
    R[$setting.cBruns]=$(ceiling_runs "$CEIL" "$BATCH")
    R[$setting.rss]=$RSS_PEAK
    R[$setting.rssidle]=$RSS_IDLE
    R[$setting.non200]="${NON200:-?}${CODES:+ ($CODES)}"
    R[$setting.sanity]="$OK200/$ROWS $SANITY"
    R[$setting.batch]=$AVG_BATCH
    R[$setting.repeats]=${REPEATS:-?}
    R[$setting.cpu]="machine $MACHINE_BUSY, server $SERVER_CPU"
    R[$setting.hzcpu]=$HZ_CPU
done

# --- summary --------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
yesno() { # a op b, numeric
    if awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN { if (a == "" || a == "n/a") exit 1
        if (op == ">=") exit !(a + 0 >= b + 0); exit !(a + 0 < b + 0) }'; then echo MET; else echo MISSED; fi
}

echo
echo "== summary (ceilings: mean of the runs in this invocation; targets are ratios in this run)"
printf '%-7s %8s %7s %7s %8s %8s %8s %7s %8s %8s %7s %7s %7s %6s\n' setting 'hook r/s' 'p50 ms' \
    'p99 ms' 'hz r/s' 'sql@64' "sql@$BATCH" 'batch≈' 'sql@b≈' "h/s$BATCH" 'h/s64' 'h/s@b≈' 'h/hz' 'RSS MB'
for s in $SETTINGS; do
    printf '%-7s %8s %7s %7s %8s %8s %8s %7s %8s %8s %7s %7s %7s %6s\n' "$s" "${R[$s.rps]}" \
        "${R[$s.p50]}" "${R[$s.p99]}" "${R[$s.hz]}" "${R[$s.c64]}" "${R[$s.cB]}" "${R[$s.batch]}" \
        "${R[$s.cM]}" "$(ratio "${R[$s.rps]}" "${R[$s.cB]}")" "$(ratio "${R[$s.rps]}" "${R[$s.c64]}")" \
        "$(ratio "${R[$s.rps]}" "${R[$s.cM]}")" "$(ratio "${R[$s.rps]}" "${R[$s.hz]}")" "${R[$s.rss]}"
done
echo
for s in $SETTINGS; do
    echo "$s: sqlite rows/s batch 1 ${R[$s.c1]}, 12 ${R[$s.c12]}, 64 [${R[$s.c64runs]}], $BATCH [${R[$s.cBruns]}];" \
        "healthz p99 ${R[$s.hzp99]} ms; idle RSS ${R[$s.rssidle]} MB;" \
        "non-200 ${R[$s.non200]}; repeated bodies ${R[$s.repeats]}; 200s/rows ${R[$s.sanity]}"
    echo "   cpu, webhook run: ${R[$s.cpu]}"
    echo "   cpu, /healthz run: server ${R[$s.hzcpu]}"
done
echo
echo "targets:"
for s in $SETTINGS; do
    r=$(ratio "${R[$s.rps]}" "${R[$s.cB]}")
    echo "  $s: ingest >= 0.8x sqlite@$BATCH: $r -> $(yesno "$r" ">=" 0.8)" \
        "(vs sqlite@64: $(ratio "${R[$s.rps]}" "${R[$s.c64]}"))"
    if [[ $s == normal ]]; then
        echo "  $s: p99 < 50 ms: ${R[$s.p99]} ms -> $(yesno "${R[$s.p99]}" "<" 50)"
    fi
    echo "  $s: peak RSS < 64 MB: ${R[$s.rss]} MB -> $(yesno "${R[$s.rss]}" "<" 64)"
done
echo "note: with $CONNS connections at most $CONNS requests are in flight, so the server's commits"
echo "      hold at most $CONNS events whatever batch-size says; 'batch≈' is the measured mean."
timeout 900 python3 "$HERE/e2e.py" "$BIN" # end-to-end delivery latency and drain rate (issue 4)
