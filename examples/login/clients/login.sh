#!/bin/sh
# Logs in to the login example with curl and a cookie jar, counts three
# visits, logs out, and shows that the session is gone.
#   login.sh BASE_URL USER PASSWORD      (BASE_URL: http://127.0.0.1:8080/app)
set -eu
base=$1 user=$2 password=$3
jar=$(mktemp)
trap 'rm -f "$jar"' EXIT
c() { curl -sS -b "$jar" -c "$jar" "$@"; }
status=$(c -o /dev/null -w '%{http_code}' --data-urlencode "user=$user" --data-urlencode "password=$password" "$base/login")
[ "$status" = 303 ] || { echo "login failed: $status"; exit 1; }
echo "logged in as $user"
for _ in 1 2 3; do c "$base/" | grep -o 'count=[0-9]*'; done
c -X POST "$base/logout"
c "$base/" | grep -q 'login form' && echo "the session is gone"
