#!/usr/bin/env python3
"""The busy machine row taken apart: where each side's CPU goes, quiet and
with a CPU hog, and how much of the machine the hog takes from each.

    bench/busy_split.py [--policies batch,other] [--threads auto] [--rounds 2] [--seconds 5] [--sessions 50]

The warm row's setup (bench/run.py: 50 sessions of the C FastCGI worker in
psd, nginx in front of a spawn-fcgi pool of 50, the same wrk and cookie
script), per worker scheduling policy: quiet rounds, then rounds with a
`while True: pass` process running, alternating psd and nginx. For each run:
req/s; µs of CPU per request of the front (psd, or nginx's worker
processes), the workers and wrk; the cores the side used and the cores the
hog took; context switches per request (voluntary, involuntary) of the front
and the workers, and rescheduling interrupts per request (the kernel's
`RES` line, machine-wide). Build first: `cargo build --release -p psd`.
"""

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402
from stateful import cpu_seconds  # noqa: E402


def pids(*pgrep):
    out = subprocess.run(["pgrep", *pgrep], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def switches(processes):
    """(voluntary, involuntary) context switches of every thread of `processes`."""
    counts = [0, 0]
    for pid in processes:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                status = open(f"/proc/{pid}/task/{tid}/status").read()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    counts[0] += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    counts[1] += int(line.split()[1])
    return counts


def rescheduling_interrupts():
    for line in open("/proc/interrupts"):
        fields = line.split()
        if fields and fields[0] == "RES:":
            return sum(int(f) for f in fields[1:] if f.isdigit())
    return 0


def measure(label, load, front, workers, hog):
    """One run of `load`; prints its line."""
    sides = {"front": front, "workers": workers, "hog": hog}
    cpu0 = {k: cpu_seconds(v) for k, v in sides.items()}
    sw0 = [switches(front), switches(workers)]
    res0, wrk0, t0 = rescheduling_interrupts(), resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    result = load()
    elapsed = time.monotonic() - t0
    assert result["non2xx"] == 0, f"{label}: {result}"
    res1, wrk1 = rescheduling_interrupts(), resource.getrusage(resource.RUSAGE_CHILDREN)
    sw1 = [switches(front), switches(workers)]
    cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in sides.items()}
    cpu["wrk"] = wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime
    n = result["rps"] * elapsed
    per = " | ".join(f"{cpu[k] * 1e6 / n:.1f}" for k in ("front", "workers", "wrk"))
    used = sum(cpu[k] for k in ("front", "workers", "wrk"))
    print(f"| {label} | {result['rps']:,.0f} | {per} | {used * 1e6 / n:.1f} | {used / elapsed:.2f} | "
          f"{cpu['hog'] / elapsed:.2f} | {(sw1[0][0] - sw0[0][0]) / n:.2f} + {(sw1[0][1] - sw0[0][1]) / n:.2f} | "
          f"{(sw1[1][0] - sw0[1][0]) / n:.2f} + {(sw1[1][1] - sw0[1][1]) / n:.2f} | {(res1 - res0) / n:.2f} |",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="batch,other", help="WorkerSchedulingPolicy values, in turn")
    parser.add_argument("--threads", default="auto", help="psd's Threads")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--profile", default="release", help="the cargo profile of psd (the tests: debug)")
    args = parser.parse_args()
    bench = run.Bench(argparse.Namespace(smoke=False, seconds=args.seconds, rounds=1, no_install=True))
    bench.bin = run.ROOT / "target" / args.profile
    bench.c_worker = run.c_worker(bench.work)
    print("| run | req/s | front µs/req | workers µs/req | wrk µs/req | sum | side cores | hog cores "
          "| front switches/req (vol + invol) | workers switches/req | RES/req |")
    print("| --- " * 11 + "|")
    start_psd = bench.psd
    bench.psd = lambda name, body: start_psd(name, f"Threads {args.threads}\n{body}")
    with run.NoAutogroup():
        for policy in args.policies.split(","):
            name = f"split-{policy}"
            with bench.warm_pair(name, args.sessions, f"  WorkerSchedulingPolicy {policy}\n") as (psd, nginx):
                psd()  # every session started
                psd_pid = pids("-f", f"{name}.conf")[0]
                front = {"psd": [psd_pid], "nginx": pids("-f", "nginx: worker")}
                workers = {"psd": pids("-P", str(psd_pid)), "nginx": pids("-f", f"counter-c-pool-{name}")}
                loads = {"psd": psd, "nginx": nginx}
                for phase in ("quiet", "busy"):
                    with run.Proc(run.HOG) if phase == "busy" else contextlib.nullcontext() as competitor:
                        hog_pids = [competitor.p.pid] if competitor else []
                        for _ in range(args.rounds):
                            for side, load in loads.items():
                                measure(f"{policy} {phase} {side}", load, front[side], workers[side], hog_pids)


if __name__ == "__main__":
    main()
