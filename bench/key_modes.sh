#!/usr/bin/env bash
# req/s through psd on the Rust FastCGI worker with each SessionKey mode:
# 50 live sessions, each wrk request naming one of them (round robin).
#   cookie: Cookie header        query: ?sid=ID        path: one cookie, 50 paths
#   ip:     X-Forwarded-For from a trusted proxy (wrk has one source address)
#
#   bench/key_modes.sh [SECONDS]     default 5
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
sessions=50
command -v wrk >/dev/null || { echo "wrk missing: scripts/install-test-deps.sh installs it" >&2; exit 1; }
cargo build --release --quiet -p psd -p counter-fcgi
work=$(mktemp -d /tmp/psd-modes.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

start() { # $1: SessionKey parts
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/psd.conf" <<CONF
Listen 127.0.0.1:$port
DataDir $work/data
LogLevel warn
TrustedProxy 127.0.0.1
<Location />
    Worker fastcgi $PWD/target/release/counter-fcgi
    SetEnv COUNTER_STATELESS 1
    SessionKey $1
    MaxSessionsPerClient 1000
</Location>
CONF
  target/release/psd serve -c "$work/psd.conf" 2>"$work/psd.log" &
  psd_pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
}

stop() { kill "$psd_pid"; wait "$psd_pid" 2>/dev/null || true; }

# $1: Lua table entries, one "{path, header-name, header-value}" per session
run() {
  { echo "local s = {"; cat; echo "}"; cat <<'LUA'
local n = 0
request = function()
  n = n + 1
  local e = s[(n % #s) + 1]
  local h = {}
  if e[2] ~= "" then h[e[2]] = e[3] end
  return wrk.format("GET", e[1], h)
end
LUA
  } > "$work/mode.lua"
  wrk -t2 -c$sessions -d"${seconds}s" --latency -s "$work/mode.lua" "http://127.0.0.1:$port/" \
    | awk -v mode="$1" '/Requests\/sec/ { rps = $2 } / 50%/ { p50 = $2 } / 99%/ { p99 = $2 } /Non-2xx/ { bad = $NF }
        END { printf "%-7s %10s req/s   p50 %-8s p99 %-8s non-2xx %d\n", mode, rps, p50, p99, bad }'
}

cookie_of() { curl -s -D - -o /dev/null "$@" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p'; }

start "cookie psd_sid"
for _ in $(seq $sessions); do echo "{\"/\", \"Cookie\", \"$(cookie_of "http://127.0.0.1:$port/")\"},"; done | run cookie
stop

start "query sid"
for _ in $(seq $sessions); do
  loc=$(curl -s -D - -o /dev/null "http://127.0.0.1:$port/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  echo "{\"$loc\", \"\", \"\"},"
done | run query
stop

start "cookie psd_sid path"
c=$(cookie_of "http://127.0.0.1:$port/p0")
for i in $(seq $sessions); do curl -s -o /dev/null -H "Cookie: $c" "http://127.0.0.1:$port/p$i"; echo "{\"/p$i\", \"Cookie\", \"$c\"},"; done | run path
stop

start "ip"
for i in $(seq $sessions); do echo "{\"/\", \"X-Forwarded-For\", \"198.51.100.$i\"},"; done | run ip
stop
