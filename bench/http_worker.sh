#!/usr/bin/env bash
# The same warm `http` worker (examples/http-rust) through psd and hit
# directly, alternating in one run: req/s and latency with wrk at saturation
# (32 connections) and below it (1 connection), and WebSocket echo round
# trips per second (ws-load). Prints medians of ROUNDS and the ratios.
#
#   bench/http_worker.sh [ROUNDS] [SECONDS]     defaults: 3 5
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-5}
command -v wrk >/dev/null || { echo "wrk missing: scripts/install-test-deps.sh installs it" >&2; exit 1; }
cargo build --release --quiet -p psd -p http-worker
work=$(mktemp -d /tmp/psd-httpbench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

psd_port=$(free_port)
cat > "$work/psd.conf" <<CONF
Listen 127.0.0.1:$psd_port
DataDir $work/data
LogLevel warn
<Location /app>
    Worker http $PWD/target/release/http-worker
    WorkerConcurrency 64
</Location>
CONF
target/release/psd serve -c "$work/psd.conf" 2>"$work/psd.log" &
direct_port=$(free_port)
PORT=$direct_port target/release/http-worker 2>/dev/null &
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$psd_port/app/" && curl -s -o /dev/null "http://127.0.0.1:$direct_port/" && break; sleep 0.05; done
cookie=$(curl -s -D - -o /dev/null "http://127.0.0.1:$psd_port/app/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')

# wrk ... → "req/s p50_ms p99_ms non2xx"
measure() {
  wrk --latency "$@" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 } / 50%/ { p50 = ms($2) } / 99%/ { p99 = ms($2) } /Non-2xx/ { bad = $NF }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, bad }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

: > "$work/results"
for round in $(seq "$rounds"); do
  for mode in direct psd; do
    if [ "$mode" = psd ]; then url="http://127.0.0.1:$psd_port/app/"; hdr=(-H "Cookie: $cookie")
    else url="http://127.0.0.1:$direct_port/"; hdr=(-H "X-Bench: 1"); fi
    echo "$mode sat $(measure -t2 -c32 -d"${seconds}s" "${hdr[@]}" "$url")" >> "$work/results"
    echo "$mode one $(measure -t1 -c1 -d"${seconds}s" "${hdr[@]}" "$url")" >> "$work/results"
    if [ "$mode" = psd ]; then
      ws=$(target/release/ws-load "ws://127.0.0.1:$psd_port/app/" 10 3000 "$cookie")
    else
      ws=$(target/release/ws-load "ws://127.0.0.1:$direct_port/" 10 3000)
    fi
    echo "$mode ws $(echo "$ws" | sed -n 's/.*: \([0-9]*\) msgs\/s/\1/p')" >> "$work/results"
  done
done

get() { awk -v m="$1" -v k="$2" -v f="$3" '$1 == m && $2 == k { print $f }' "$work/results" | median; }
if grep -q " [1-9][0-9]*$" <(awk '$2 != "ws" { print $NF }' "$work/results"); then echo "non-2xx answers seen:"; cat "$work/results"; fi
echo "machine: $(nproc) cores, $(uname -sr); $rounds rounds of ${seconds}s, medians"
printf "%-34s %12s %12s %8s\n" "" direct "through psd" ratio
row() { printf "%-34s %12s %12s %8s\n" "$1" "$2" "$3" "$(awk -v a="$2" -v b="$3" -v inv="$4" 'BEGIN { printf "%.2f", inv ? a / b : b / a }')"; }
row "req/s, 32 connections" "$(get direct sat 3)" "$(get psd sat 3)" 0
row "p50 ms, 32 connections" "$(get direct sat 4)" "$(get psd sat 4)" 0
row "p99 ms, 32 connections" "$(get direct sat 5)" "$(get psd sat 5)" 0
row "req/s, 1 connection" "$(get direct one 3)" "$(get psd one 3)" 0
row "p50 ms, 1 connection" "$(get direct one 4)" "$(get psd one 4)" 0
row "p99 ms, 1 connection" "$(get direct one 5)" "$(get psd one 5)" 0
row "WebSocket msgs/s, 10 connections" "$(get direct ws 3)" "$(get psd ws 3)" 0
