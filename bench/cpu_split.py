#!/usr/bin/env python3
"""Where the CPU of one proxied request goes: wrk, the worker, the proxy.

    bench/cpu_split.py [--rounds 3] [--seconds 5] [--workers 1|2] [--profile release|debug]

The Rust http worker hit directly, through nginx `proxy_pass` (upstream
keep-alive, `worker_processes N`) and through psd (one session, `Threads N`),
alternating, `wrk -t2 -c32` on loopback. For each: req/s and the CPU time
(user + system, from getrusage for wrk and /proc/PID/stat for the
others) that wrk, the worker and the proxy spent per request. On a machine
whose cores all run the test, req/s is bounded by the sum: a proxy can only
beat another by the share of that sum it saves. Build first:
`cargo build --release -p psd -p http-worker`.
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxies  # noqa: E402
from run import ROOT, new_session_cookie, wait_port, wrk  # noqa: E402
from stateful import cpu_seconds  # noqa: E402


def children(pid, name):
    out = subprocess.run(["pgrep", "-P", str(pid), name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def measure(port, proxy, worker, seconds, headers=()):
    """One wrk run: {rps, wrk, worker, proxy} (µs of CPU per request)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p0, w0 = cpu_seconds(proxy), cpu_seconds(worker)
    r = wrk(f"http://127.0.0.1:{port}/", 32, seconds, headers=headers)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    p1, w1 = cpu_seconds(proxy), cpu_seconds(worker)
    assert r["non2xx"] == 0, r
    n = r["rps"] * seconds
    wrk_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"rps": r["rps"], "wrk": wrk_s * 1e6 / n, "worker": (w1 - w0) * 1e6 / n,
            "proxy": (p1 - p0) * 1e6 / n}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", default="1", help="nginx's worker_processes and psd's Threads")
    parser.add_argument("--profile", default="release", help="the cargo profile of the binaries (the tests: debug)")
    args = parser.parse_args()
    binary = ROOT / "target" / args.profile
    work = Path(tempfile.mkdtemp(prefix="psd-cpu-split-"))
    worker_port, procs = proxies.start_worker(binary / "http-worker")
    try:
        nginx, nginx_port = proxies.start_nginx(work, args.workers, worker_port, "", "")
        procs.append(nginx)
        psd, psd_port = proxies.start_psd(binary / "psd", work, "psd", binary / "http-worker", "",
                                          f"Threads {args.workers}\n")
        procs.append(psd)
        wait_port(nginx_port)
        wait_port(psd_port)
        cookie = f"Cookie: {new_session_cookie(f'http://127.0.0.1:{psd_port}/')}"
        direct = [procs[0].p.pid]
        systems = {
            "direct": (worker_port, [], direct, ()),
            f"nginx {args.workers}": (nginx_port, children(nginx.p.pid, "nginx"), direct, ()),
            f"psd Threads {args.workers}": (psd_port, [psd.p.pid], children(psd.p.pid, "http-worker"), (cookie,)),
        }
        results = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, (port, proxy, worker, headers) in systems.items():
                results[name].append(measure(port, proxy, worker, args.seconds, headers))
    finally:
        proxies.stop(procs)
    print(f"# bench/cpu_split.py --rounds {args.rounds} --seconds {args.seconds} --workers {args.workers}")
    print("\nmedians of the rounds; CPU in µs per request\n")
    print("| system | req/s | wrk | worker | proxy | sum |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "wrk", "worker", "proxy")}
        total = med["wrk"] + med["worker"] + med["proxy"]
        print(f"| {name} | {med['rps']:,.0f} | {med['wrk']:.1f} | {med['worker']:.1f} | {med['proxy']:.1f} "
              f"| {total:.1f} |")


if __name__ == "__main__":
    main()
