#!/usr/bin/env bash
# What the benchmarks need beyond the test suite's tools, idempotently:
# spawn-fcgi (a FastCGI process manager), fcgiwrap (classic CGI behind nginx),
# libfcgi-dev (to build the C worker), h2load (nghttp2-client: HTTP/2 load), redis-py, and
# the test dependencies (nginx, wrk…).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
need=()
command -v spawn-fcgi >/dev/null || need+=(spawn-fcgi)
[ -x /usr/sbin/fcgiwrap ] || need+=(fcgiwrap)
[ -f /usr/include/fcgiapp.h ] || need+=(libfcgi-dev)
command -v gcc >/dev/null || need+=(gcc)
command -v h2load >/dev/null || need+=(nghttp2-client)
. scripts/apt-install.sh
apt_install "${need[@]}"
# redis-py: the stateless side of bench/stateful.py keeps its sessions in Redis.
python3 -c 'import redis' 2>/dev/null || python3 -m pip install -q 'redis>=5'

