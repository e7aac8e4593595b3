#!/usr/bin/env bash
# Issue 2's figures: req/s for warm sessions through psd on the Rust FastCGI
# worker (wrk, each request carrying one of N session cookies), and the time
# of a new session (spawn + first answer) as curl's time to first byte.
#
#   bench/core.sh [SESSIONS] [SECONDS] [NEW_SESSIONS]     defaults: 50 10 200
#
# Loopback only; every run is bounded in time and count.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-50}
seconds=${2:-10}
fresh=${3:-200}
command -v wrk >/dev/null || { echo "wrk missing: scripts/install-test-deps.sh installs it" >&2; exit 1; }
cargo build --release --quiet -p psd -p counter-fcgi

work=$(mktemp -d /tmp/psd-bench.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/psd.conf" <<CONF
Listen 127.0.0.1:$port
DataDir $work/data
LogLevel warn
MaxSessions $((sessions + fresh + 10))
<Location />
    Worker fastcgi $PWD/target/release/counter-fcgi
    SetEnv COUNTER_STATELESS 1
    MaxSessionsPerClient $((sessions + fresh + 10))
</Location>
CONF
target/release/psd serve -c "$work/psd.conf" 2>"$work/psd.log" &
psd_pid=$!
trap 'kill $psd_pid 2>/dev/null; wait $psd_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done

# Warm sessions: make N, then let wrk rotate through their cookies.
{
  echo "local cookies = {"
  for _ in $(seq "$sessions"); do
    curl -s -D - -o /dev/null "http://127.0.0.1:$port/" | tr -d '\r' \
      | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/  "\1",/p'
  done
  echo "}"
  cat <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/", { ["Cookie"] = cookies[(n % #cookies) + 1] })
end
LUA
} > "$work/warm.lua"
echo "== warm sessions: $sessions sessions, wrk -t2 -c$sessions -d${seconds}s"
wrk -t2 -c"$sessions" -d"${seconds}s" --latency -s "$work/warm.lua" "http://127.0.0.1:$port/" \
  | grep -E "Requests/sec|Latency|50%|99%|Non-2xx|Socket errors" || true

# New sessions: every request without a cookie starts a worker process.
echo "== new sessions: $fresh sequential requests without a cookie (spawn + first answer)"
for _ in $(seq "$fresh"); do
  curl -s -o /dev/null -w '%{http_code} %{time_starttransfer}\n' "http://127.0.0.1:$port/"
done | sort -k2 -n | awk '{ t[NR] = $2 * 1000; if ($1 != 200) bad++ } END {
  printf "p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  (n=%d, non-200: %d)\n", t[int(NR*0.5)], t[int(NR*0.9)], t[int(NR*0.99)], NR, bad }'
