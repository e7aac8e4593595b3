#!/usr/bin/env python3
"""The state store and its API, measured (issue 12).

    bench/state.py [--rounds 3] [--seconds 4] [--sessions 10000]

Rows, each run with the same wrk on loopback:
- PUT and GET of a 1 KiB value through PSD_STATE_URL from 50 sessions, 50
  connections: StateStore embedded (every 2xx committed to disk, concurrent
  writes sharing one commit), the same with group commit off
  (PSD_STORE_MAX_BATCH=1: one fsync per write), StateStore redis:// (a
  redis-server of the bench's own, no persistence configured) and
  StateStore memory.
- Restart: a DataDir holding N dormant sessions (each with a 1 KiB value),
  written by `cargo run --example store_fill`; the time from starting psd to
  the first resumed request answered, and the store file's size per session.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Proc, free_port, wait_port, wrk  # noqa: E402

COUNTER = ROOT / "examples/counter-perl/counter.pl"


def start_psd(binary, work, name, extra="", env=None):
    port = free_port()
    conf = work / f"{name}.conf"
    conf.write_text(f"Listen 127.0.0.1:{port}\nDataDir {work}/{name}-data\nLogLevel warn\n{extra}"
                    f"<Location />\n  Worker fastcgi {COUNTER}\n  MaxSessionsPerClient 100000\n</Location>\n")
    proc = Proc([str(binary), "serve", "-c", str(conf)], stderr=open(work / f"{name}.log", "w"),
                env={**os.environ, **(env or {})})
    wait_port(port)
    return proc, port


def state_urls(port, n):
    urls = []
    for _ in range(n):
        body = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                              check=True).stdout
        urls.append(re.search(r"state=(\S+)", body).group(1))
    return urls


def lua(work, name, method, urls):
    base = re.match(r"(http://[^/]+)/", urls[0]).group(1)
    paths = [u[len(base):] + "v" for u in urls]
    script = work / f"{name}-{method}.lua"
    body = "x" * 1024
    script.write_text("local paths = {\n" + "\n".join(f'  "{p}",' for p in paths) + "\n}\nlocal n = 0\n"
                      f'local body = "{body}"\n'
                      "request = function()\n  n = n + 1\n"
                      f'  return wrk.format("{method}", paths[(n % #paths) + 1], nil, '
                      f'{"body" if method == "PUT" else "nil"})\nend\n')
    return base + "/", script


def api_rows(binary, work, args):
    redis_port = free_port()
    redis = Proc(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                  "no"], stdout=subprocess.DEVNULL)
    wait_port(redis_port)
    systems = [("embedded", "", None), ("embedded, group commit off", "", {"PSD_STORE_MAX_BATCH": "1"}),
               ("redis", f"StateStore redis://127.0.0.1:{redis_port}/0\n", None),
               ("memory", "StateStore memory\n", None)]
    rows = []
    with redis:
        for label, extra, env in systems:
            rows += api_row(binary, work, args, label, extra, env)
    return rows


def api_row(binary, work, args, label, extra, env):
    rows = []
    name = re.sub(r"\W+", "-", label)
    proc, port = start_psd(binary, work, name, extra, env)
    with proc:
        urls = state_urls(port, 50)
        base, put = lua(work, name, "PUT", urls)
        _, get = lua(work, name, "GET", urls)
        for method, script in (("PUT", put), ("GET", get)):
            runs = [wrk(base, 50, args.seconds, script=script) for _ in range(args.rounds)]
            bad = sum(r["non2xx"] for r in runs)
            rows.append((label, method, statistics.median(r["rps"] for r in runs),
                         statistics.median(r["p50"] for r in runs), statistics.median(r["p99"] for r in runs), bad))
    return rows


def restart_row(binary, work, args):
    data = work / "restart-data"
    out = subprocess.run(["cargo", "run", "--quiet", "--release", "-p", "psd", "--example", "store_fill", "--",
                          str(data), str(args.sessions)], cwd=ROOT, capture_output=True, text=True, check=True)
    session_id = out.stdout.strip()
    size = (data / "state.redb").stat().st_size
    port = free_port()
    conf = work / "restart.conf"
    conf.write_text(f"Listen 127.0.0.1:{port}\nDataDir {data}\nLogLevel warn\n"
                    f"<Location />\n  Worker fastcgi {COUNTER}\n</Location>\n")
    began = time.perf_counter()
    proc = Proc([str(binary), "serve", "-c", str(conf)], stderr=open(work / "restart.log", "w"))
    with proc:
        wait_port(port, timeout=60)
        listening = time.perf_counter() - began
        body = subprocess.run(["curl", "-s", "-b", f"psd_sid={session_id}", f"http://127.0.0.1:{port}/"],
                              capture_output=True, text=True, check=True).stdout
        served = time.perf_counter() - began
    if "resumed=1" not in body:
        raise RuntimeError(f"the session did not resume: {body}")
    return listening, served, size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=10_000)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "psd"], cwd=ROOT, check=True)
    binary = ROOT / "target/release/psd"
    work = Path(tempfile.mkdtemp(prefix="psd-state-"))
    print(f"# bench/state.py {' '.join(sys.argv[1:])}")
    print("\n| store | op, 1 KiB, 50 sessions × 50 conns | req/s | p50 ms | p99 ms | non-2xx |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, method, rps, p50, p99, bad in api_rows(binary, work, args):
        print(f"| {label} | {method} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {bad} |")
    listening, served, size = restart_row(binary, work, args)
    print(f"\n| restart with {args.sessions:,} dormant sessions | |\n| --- | --- |")
    print(f"| psd listening after | {listening * 1000:.0f} ms |")
    print(f"| first resumed request answered after | {served * 1000:.0f} ms |")
    print(f"| store file | {size / 1e6:.1f} MB, {size / args.sessions:,.0f} bytes a session (1 KiB value each) |")


if __name__ == "__main__":
    main()
