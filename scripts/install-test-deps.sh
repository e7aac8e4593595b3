#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, idempotently:
# Perl's FCGI (libfcgi-perl), cgi-fcgi (libfcgi-bin), curl, wrk, and Python's flup and websockets.
set -euo pipefail

need_apt=()
perl -MFCGI -e1 2>/dev/null || need_apt+=(libfcgi-perl)
command -v cgi-fcgi >/dev/null || need_apt+=(libfcgi-bin)
command -v curl >/dev/null || need_apt+=(curl)
command -v wrk >/dev/null || need_apt+=(wrk)

if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python3 -c 'import flup' 2>/dev/null || python3 -m pip install -q 'flup>=1.0.3'
python3 -c 'import websockets.asyncio.server' 2>/dev/null || python3 -m pip install -q 'websockets>=13'
