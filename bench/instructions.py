#!/usr/bin/env python3
"""Instructions psd executes per warm request, counted by valgrind's
callgrind: repeatable whatever else the machine does, so a hot-path change
of a few percent shows where wrk's round-to-round noise (±15 % here) hides it.

    bench/instructions.py BEFORE_PSD AFTER_PSD [--requests 3000] [--http]

For each binary: psd under callgrind with the C libfcgi counter
(bench/workers/counter.c; with --http, the Rust http worker behind psd's
proxy path), `http-load URL N 4 warm` (4 sessions, each
connection's own cookie) once with N = requests / 3 and once with N =
requests; the difference divided by the difference in requests is the cost
of one warm request, start-up and session creation cancelled out. Loopback
only.
"""
import argparse
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, c_worker, free_port, wait_port  # noqa: E402


def total(path):
    text = Path(path).read_text()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    return int(m.group(1))


def run(binary, worker, protocol, work, n):
    port = free_port()
    conf = work / f"{port}.conf"
    conf.write_text(f"Listen 127.0.0.1:{port}\nDataDir {work}/data-{port}\nLogLevel warn\n"
                    f"<Location />\n  Worker {protocol} {worker}\n  MaxSessionsPerClient 100000\n</Location>\n")
    out = work / f"callgrind.{port}"
    psd = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            str(binary), "serve", "-c", str(conf)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=120)
        subprocess.run([str(ROOT / "target/release/http-load"), f"http://127.0.0.1:{port}/", str(n), "4", "warm"],
                       check=True, capture_output=True)
    finally:
        psd.send_signal(signal.SIGTERM)
        psd.wait(timeout=120)
    return total(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--http", action="store_true", help="the http proxy path (the Rust http worker)")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "http-worker", "--bins"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="psd-instr-"))
    if args.http:
        worker, protocol = ROOT / "target/release/http-worker", "http"
    else:
        worker, protocol = c_worker(work), "fastcgi"
    low, high = args.requests // 3, args.requests
    per = {}
    for name, binary in (("before", args.before), ("after", args.after)):
        a, b = run(binary, worker, protocol, work, low), run(binary, worker, protocol, work, high)
        per[name] = (b - a) / (high - low)
        print(f"{name}: {per[name]:,.0f} instructions per warm request ({binary})")
    print(f"after / before = {per['after'] / per['before']:.4f}")


if __name__ == "__main__":
    main()
