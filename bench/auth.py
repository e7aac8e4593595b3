#!/usr/bin/env python3
"""What `AuthType Basic` costs a warm request, with bcrypt.

    bench/auth.py --rounds 3 --seconds 5

One psd (release build), two `<Location>`s of the same C libfcgi counter
(bench/workers/counter.c), each with `SessionKey ip` so every request of the
run reaches one warm session and `WorkerConcurrency 1`: `/open` without access
control, `/auth` with `AuthType Basic` and a bcrypt user (cost 10, `htpasswd
-B -C 10`). wrk sends the `Authorization` header on every request to both, the
two locations alternating per round. psd verifies the password once (bcrypt)
and then finds it in its cache of verified credentials; the cost of one
bcrypt verification is shown beside it. Loopback only.
"""
import argparse
import base64
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Proc, c_worker, free_port, wait_port, wrk  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--conns", type=int, default=16)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "psd"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="psd-auth-bench-"))
    worker = c_worker(work)
    users = work / "users"
    subprocess.run(["htpasswd", "-c", "-b", "-B", "-C", "10", str(users), "ann", "ann-pw"],
                   check=True, capture_output=True)
    port = free_port()
    conf = work / "psd.conf"
    location = f"  Worker fastcgi {worker}\n  SessionKey ip\n"
    conf.write_text(f"Listen 127.0.0.1:{port}\nDataDir {work}/data\nLogLevel warn\n"
                    f"<Location /open>\n{location}</Location>\n"
                    f"<Location /auth>\n{location}  AuthType Basic\n  AuthUserFile {users}\n"
                    f"  Require valid-user\n</Location>\n")
    header = "Authorization: Basic " + base64.b64encode(b"ann:ann-pw").decode()
    results = {"open": [], "auth": []}
    with Proc([str(ROOT / "target/release/psd"), "serve", "-c", str(conf)], stderr=open(work / "psd.log", "w")):
        wait_port(port)
        # The first request of each: the session starts, /auth verifies bcrypt once.
        first = {}
        for name in ("open", "auth"):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/{name}/",
                                             headers={"Authorization": header.split(": ", 1)[1]})
            started = time.perf_counter()
            urllib.request.urlopen(request).read()
            first[name] = (time.perf_counter() - started) * 1000
        for _ in range(args.rounds):
            for name in ("open", "auth"):
                r = wrk(f"http://127.0.0.1:{port}/{name}/", args.conns, args.seconds, headers=[header])
                assert r["non2xx"] == 0, r
                results[name].append(r)
    med = {k: statistics.median(r["rps"] for r in v) for k, v in results.items()}
    p99 = {k: statistics.median(r["p99"] for r in v) for k, v in results.items()}
    print(f"# bench/auth.py --rounds {args.rounds} --seconds {args.seconds} --conns {args.conns}\n")
    print("| location | req/s (median) | rounds | p99 ms | first request ms |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("open", "auth"):
        rounds = ", ".join(f"{r['rps']:.0f}" for r in results[name])
        print(f"| /{name} | {med[name]:,.0f} | {rounds} | {p99[name]:.2f} | {first[name]:.1f} |")
    print(f"\nauth / open = {med['auth'] / med['open']:.3f}; the first /auth request includes one bcrypt "
          f"verification (cost 10): {first['auth'] - first['open']:.1f} ms more than /open's first")


if __name__ == "__main__":
    main()
