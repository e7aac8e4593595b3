#!/usr/bin/env python3
"""SpareWorkers, measured (issue 13): new sessions of an application that
takes 2 s to start (crates/psd/tests/workers/slow_start.py, a Python HTTP
worker that sleeps 2 s before it accepts), with SpareWorkers 0 and 4.

    bench/spares.py [--sessions 12] [--gap 0.6]

Each new session is one curl without a cookie, `--gap` seconds after the
previous one answered (4 spares refilled at 2 s each keep up with a new
session every 0.5 s). Reported: time to first byte, p50 and p99, per setting,
next to a warm request's (the last session's, by its cookie);
and what the spares cost: the RSS of the 4 waiting worker processes, and
psd's own RSS with them vs without.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Proc, free_port, rss_kib, wait_port  # noqa: E402

WORKER = ROOT / "crates/psd/tests/workers/slow_start.py"


def child_pids(pid):
    """psd's worker processes (not its reaper, a perl child of its own)."""
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", WORKER.name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run(binary, work, spares, sessions, gap):
    port = free_port()
    conf = work / f"spares-{spares}.conf"
    conf.write_text(f"Listen 127.0.0.1:{port}\nDataDir {work}/data-{spares}\nLogLevel warn\n"
                    f"<Location />\n  Worker http {WORKER}\n  SpareWorkers {spares}\n"
                    f"  MaxSessionsPerClient 1000\n</Location>\n")
    with Proc([str(binary), "serve", "-c", str(conf)], stderr=open(work / f"spares-{spares}.log", "w")) as psd:
        wait_port(port)
        time.sleep(3)  # the pool fills
        waiting = child_pids(psd.p.pid)
        cost = {"spare_rss_kib": sum(rss_kib(p) for p in waiting), "spares_alive": len(waiting),
                "psd_rss_kib": rss_kib(psd.p.pid)}
        jar = work / f"jar-{spares}"
        ttfb = []
        for _ in range(sessions):
            ttfb.append(first_byte_ms(port, ["-c", str(jar)]))
            time.sleep(gap)
        # A warm request for comparison: the last session's, by its cookie.
        warm = [first_byte_ms(port, ["-b", str(jar)]) for _ in range(sessions)]
    return ttfb, warm, cost


def first_byte_ms(port, curl_args):
    """curl's time to the first byte of a 200 answer, in ms."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", *curl_args, "-w", "%{http_code} %{time_starttransfer}",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout.split()
    if out[0] != "200":
        raise RuntimeError(f"status {out[0]}")
    return float(out[1]) * 1000


def measure(binary, work, sessions=12, gap=0.6):
    """{SpareWorkers: (new-session ttfb ms list, warm ttfb ms list, cost)} for 0 and 4."""
    return {n: run(binary, work, n, sessions, gap) for n in (0, 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--gap", type=float, default=0.6)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "psd"], cwd=ROOT, check=True)
    binary = ROOT / "target/release/psd"
    with tempfile.TemporaryDirectory(prefix="psd-spares-") as tmp:
        work = Path(tmp)
        results = measure(binary, work, args.sessions, args.gap)
    print(f"`bench/spares.py --sessions {args.sessions} --gap {args.gap}`: new sessions of a 2-second-start "
          f"Python HTTP app, time to first byte (curl), one run\n")
    print("| SpareWorkers | p50 ms | p99 ms | max ms | warm p50 ms | spares waiting | their RSS | psd RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, (ttfb, warm, cost) in results.items():
        print(f"| {n} | {statistics.median(ttfb):.1f} | {percentile(ttfb, 0.99):.1f} | {max(ttfb):.1f} | "
              f"{statistics.median(warm):.2f} | "
              f"{cost['spares_alive']} | {cost['spare_rss_kib'] / 1024:.1f} MiB | {cost['psd_rss_kib'] / 1024:.1f} MiB |")


if __name__ == "__main__":
    main()
