#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, idempotently:
# Perl's FCGI (libfcgi-perl) and CGI::Fast (libcgi-fast-perl), cgi-fcgi (libfcgi-bin), curl, wrk, nginx, apache2
# and haproxy (the front-end recipes are tested against them; their services are
# not started), openssl and procps, redis-server (StateStore redis://; the tests
# start their own on a free port), Node.js (an HTTP worker that binds $PORT itself),
# php-cgi (one per session, a multi-file PHP app), shellinabox (a web terminal per
# session), Chromium with its driver, systemd-analyze, Prometheus' promtool, and Python's flup, websockets, gunicorn (binds
# $PSD_SOCKET) and selenium.
set -euo pipefail

need_apt=()
perl -MFCGI -e1 2>/dev/null || need_apt+=(libfcgi-perl)
perl -MCGI::Fast -e1 2>/dev/null || need_apt+=(libcgi-fast-perl)
command -v cgi-fcgi >/dev/null || need_apt+=(libfcgi-bin)
command -v curl >/dev/null || need_apt+=(curl)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v apache2ctl >/dev/null || [ -x /usr/sbin/apache2ctl ] || need_apt+=(apache2)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
# The hostile-input tests: openssl s_client (a TLS client that then says
# nothing) and pgrep (a worker's process group).
command -v openssl >/dev/null || need_apt+=(openssl)
command -v pgrep >/dev/null || need_apt+=(procps)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v node >/dev/null || need_apt+=(nodejs)
command -v php-cgi >/dev/null || need_apt+=(php-cgi)
command -v shellinaboxd >/dev/null || need_apt+=(shellinabox)
# The demo page, opened in a real browser (selenium drives it).
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# The example systemd unit is checked with systemd-analyze verify; /metrics
# with Prometheus' own promtool.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v promtool >/dev/null || need_apt+=(prometheus)
# htpasswd files for AuthUserFile, made by Apache's own tool.
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
# The login example's client scripts: Perl's LWP with HTTP::Cookies, Python's requests.
perl -MLWP::UserAgent -MHTTP::Cookies -e1 2>/dev/null || need_apt+=(libwww-perl)

. "$(dirname "$0")/apt-install.sh"
apt_install "${need_apt[@]}"

python3 -c 'import flup' 2>/dev/null || python3 -m pip install -q 'flup>=1.0.3'
python3 -c 'import websockets.asyncio.server' 2>/dev/null || python3 -m pip install -q 'websockets>=13'
python3 -c 'import gunicorn' 2>/dev/null || python3 -m pip install -q 'gunicorn>=21'
python3 -c 'import selenium' 2>/dev/null || python3 -m pip install -q 'selenium>=4.20'
python3 -c 'import requests' 2>/dev/null || python3 -m pip install -q 'requests>=2.28'
