#!/usr/bin/env python3
"""How long the admin API takes to list many sessions.

    bench/admin.py --sessions 10000 --rounds 20

Starts psd (release build) with the admin API and the C libfcgi counter
(bench/workers/counter.c), creates N live process sessions with http-load
(loopback only), then times, over R rounds each: GET /api/sessions (every
session: /proc reads for each worker, a store read for each state size),
GET /api/sessions?state=busy (the same walk, a short answer), GET /metrics, and
`psd sessions list` end to end (a process, a table of N lines). Prints a Markdown
table: p50 / p90 / max in milliseconds and the answer's size.
"""
import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Proc, c_worker, free_port, rss_kib, tool_output, wait_port  # noqa: E402


def timed(fn, rounds):
    times, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        size = fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": statistics.median(times), "p90": times[int(len(times) * 0.9) - 1] if len(times) >= 10 else times[-1],
            "max": times[-1], "size": size}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--store", default="embedded")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "psd", "-p", "counter-fcgi", "--bins"],
                   cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="psd-admin-bench-"))
    worker = c_worker(work)
    port, admin = free_port(), free_port()
    conf = work / "psd.conf"
    conf.write_text(f"Listen 127.0.0.1:{port}\nAdminListen 127.0.0.1:{admin}\nDataDir {work}/data\n"
                    f"StateStore {args.store}\nLogLevel warn\nMaxSessions 2000000\nMaxSpawnRate 1000000\n"
                    f"<Location />\n  Worker fastcgi {worker}\n  MaxSessionsPerClient 2000000\n"
                    f"  SessionTimeout 1h\n</Location>\n")
    psd_bin = ROOT / "target/release/psd"
    with Proc([str(psd_bin), "serve", "-c", str(conf)], stderr=open(work / "psd.log", "w")) as psd:
        wait_port(port)
        wait_port(admin)
        out = tool_output([str(ROOT / "target/release/http-load"), f"http://127.0.0.1:{port}/",
                           str(args.sessions), "8", "new"])
        token = (work / "data/admin-token").read_text().strip()

        def get(path):
            def call():
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=120)
                c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
                r = c.getresponse()
                body = r.read()
                assert r.status == 200, (r.status, body[:200])
                c.close()
                return len(body)
            return call

        def cli():
            r = subprocess.run([str(psd_bin), "sessions", "-c", str(conf)], capture_output=True, check=True)
            return len(r.stdout)

        listed = get("/api/sessions")()
        rows = {
            "GET /api/sessions": timed(get("/api/sessions"), args.rounds),
            "GET /api/sessions?state=busy": timed(get("/api/sessions?state=busy"), args.rounds),
            "GET /api/sessions/HANDLE": None,
            "GET /metrics": timed(get("/metrics"), args.rounds),
            "psd sessions list (process, table)": timed(cli, max(3, args.rounds // 4)),
        }
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
        c.request("GET", "/api/sessions?state=idle", headers={"Authorization": f"Bearer {token}"})
        import json
        first = json.loads(c.getresponse().read())["sessions"][0]["handle"]
        rows["GET /api/sessions/HANDLE"] = timed(get(f"/api/sessions/{first}"), args.rounds)
        rss = rss_kib(psd.p.pid)
    print(f"{int(out['per_s'])} new sessions/s, {int(out['non2xx'])} refused; "
          f"list answer {listed / 1024:.0f} KiB; psd RSS {rss / 1024:.0f} MiB; StateStore {args.store}\n")
    print(f"| request ({args.sessions} live process sessions) | p50 ms | p90 ms | max ms | answer |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['p50']:.1f} | {r['p90']:.1f} | {r['max']:.1f} | {r['size'] / 1024:.1f} KiB |")


if __name__ == "__main__":
    main()
