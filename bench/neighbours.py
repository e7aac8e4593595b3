#!/usr/bin/env python3
"""Interactive sessions beside computing ones: psd's own workers as the
busy machine, under each `WorkerSchedulingPolicy`.

    bench/neighbours.py [--policies batch,other] [--rounds 3] [--seconds 3] [--burners 2]

psd's kind of app: many sessions of one program, some computing (a job a user
started and polls) while others answer a person (a REPL, a form). One psd per
policy, each with one `<Location>` of the C counter worker
(bench/workers/counter.c, libfcgi), which answers at once, or with
`?burn=SECONDS` after spinning that long.
Each round, for each policy in turn: one user on one keep-alive connection
with a session of its own (`wrk -t1 -c1`, its cookie), alone ("quiet") and
then beside BURNERS sessions spinning meanwhile ("computing"); the burners
and the user's worker run under the same policy, as in one app. Medians of
req/s, p50 and p99 over the rounds; the kernel's autogroup scheduling off
for the run when allowed. Build first: `cargo build --release -p psd`.
Loopback only.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Bench, NoAutogroup, c_worker, new_session_cookie, wrk  # noqa: E402


def run(url, cookie, seconds, burners):
    """The user's load, beside `burners` sessions spinning for longer."""
    spinning = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", f"{url}?burn={seconds + 1.5}"])
                for _ in range(burners)]
    try:
        if burners:
            time.sleep(0.5)  # the burners' sessions started and spinning
        result = wrk(url, 1, seconds, headers=[f"Cookie: {cookie}"])
        assert result["non2xx"] == 0, result
        return result
    finally:
        for p in spinning:
            p.wait(timeout=seconds + 60)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="batch,other")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--burners", type=int, default=2, help="computing sessions (default: one per core here)")
    parser.add_argument("--profile", default="release", help="the cargo profile of psd (the tests: debug)")
    args = parser.parse_args()
    bench = Bench(argparse.Namespace(smoke=False, seconds=args.seconds, rounds=1, no_install=True))
    bench.bin = ROOT / "target" / args.profile
    worker = c_worker(bench.work)
    policies = args.policies.split(",")
    phases = ("quiet", "computing")
    results = {(p, ph): [] for p in policies for ph in phases}
    servers = {}
    try:
        for policy in policies:
            proc, port = bench.psd(f"psd-{policy}", f"<Location />\n  Worker fastcgi {worker}\n"
                                                    f"  WorkerSchedulingPolicy {policy}\n"
                                                    "  MaxSessionsPerClient 100000\n  RequestTimeout 120\n"
                                                    "</Location>\n")
            servers[policy] = (proc, f"http://127.0.0.1:{port}/")
        with NoAutogroup() as autogroup:
            cookies = {policy: new_session_cookie(url) for policy, (_, url) in servers.items()}
            for _ in range(args.rounds):
                for policy, (_, url) in servers.items():
                    for phase in phases:
                        burners = args.burners if phase == "computing" else 0
                        results[(policy, phase)].append(run(url, cookies[policy], args.seconds, burners))
    finally:
        for proc, _ in servers.values():
            proc.__exit__(None, None, None)
    print(f"# bench/neighbours.py --policies {args.policies} --rounds {args.rounds} --seconds {args.seconds} "
          f"--burners {args.burners}; autogroup {autogroup.state}\n")
    print("| run | req/s (median) | p50 ms | p99 ms | req/s rounds |")
    print("| --- | --- | --- | --- | --- |")
    for (policy, phase), rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")}
        rounds = ", ".join(f"{r['rps']:.0f}" for r in rs)
        print(f"| {policy} {phase} | {med['rps']:,.0f} | {med['p50']:.3f} | {med['p99']:.3f} | {rounds} |")


if __name__ == "__main__":
    main()
