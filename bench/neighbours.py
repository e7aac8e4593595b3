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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, NoAutogroup, Proc, free_port, new_session_cookie, wait_port, wrk  # noqa: E402


def start_psd(binary, work, worker, policy):
    port = free_port()
    conf = work / f"psd-{policy}.conf"
    conf.write_text(f"""Listen 127.0.0.1:{port}
DataDir {work}/data-{policy}
LogLevel warn
<Location />
    Worker fastcgi {worker}
    WorkerSchedulingPolicy {policy}
    MaxSessionsPerClient 100000
    RequestTimeout 120
</Location>
""")
    proc = Proc([str(binary), "serve", "-c", str(conf)], stderr=open(work / f"psd-{policy}.log", "w"))
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}/"


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
    work = Path(tempfile.mkdtemp(prefix="psd-neighbours-"))
    worker = work / "counter-c"
    subprocess.run(["gcc", "-O2", "-o", str(worker), str(ROOT / "bench/workers/counter.c"), "-lfcgi"], check=True)
    policies = args.policies.split(",")
    phases = ("quiet", "computing")
    results = {(p, ph): [] for p in policies for ph in phases}
    servers = [start_psd(ROOT / "target" / args.profile / "psd", work, worker, p) for p in policies]
    try:
        with NoAutogroup() as autogroup:
            cookies = {p: new_session_cookie(url) for p, (_, url) in zip(policies, servers)}
            for _ in range(args.rounds):
                for policy, (_, url) in zip(policies, servers):
                    for phase in phases:
                        burners = args.burners if phase == "computing" else 0
                        results[(policy, phase)].append(run(url, cookies[policy], args.seconds, burners))
    finally:
        for proc, _ in servers:
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
