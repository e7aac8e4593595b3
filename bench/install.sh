#!/usr/bin/env bash
# What the benchmarks need beyond the test suite's tools, idempotently:
# spawn-fcgi (a FastCGI process manager), fcgiwrap (classic CGI behind nginx),
# libfcgi-dev (to build the C worker), and the test dependencies (nginx, wrk…).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
need=()
command -v spawn-fcgi >/dev/null || need+=(spawn-fcgi)
[ -x /usr/sbin/fcgiwrap ] || need+=(fcgiwrap)
[ -f /usr/include/fcgiapp.h ] || need+=(libfcgi-dev)
command -v gcc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    [ -z "$added_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
