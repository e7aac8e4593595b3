#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, idempotently:
# Perl's FCGI (libfcgi-perl), cgi-fcgi (libfcgi-bin), curl, wrk, nginx, apache2
# and haproxy (the front-end recipes are tested against them; their services are
# not started), and Python's flup and websockets.
set -euo pipefail

need_apt=()
perl -MFCGI -e1 2>/dev/null || need_apt+=(libfcgi-perl)
command -v cgi-fcgi >/dev/null || need_apt+=(libfcgi-bin)
command -v curl >/dev/null || need_apt+=(curl)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v apache2ctl >/dev/null || [ -x /usr/sbin/apache2ctl ] || need_apt+=(apache2)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)

if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # Servers are installed for their binaries only: keep their packages from
    # starting services (the usual policy-rc.d convention).
    added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        added_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    [ -z "$added_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi

python3 -c 'import flup' 2>/dev/null || python3 -m pip install -q 'flup>=1.0.3'
python3 -c 'import websockets.asyncio.server' 2>/dev/null || python3 -m pip install -q 'websockets>=13'
