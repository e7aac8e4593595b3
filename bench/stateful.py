#!/usr/bin/env python3
"""Why a session process at all: psd's reason to exist, measured.

    bench/stateful.py [--rounds 3] [--seconds 5] [--users 64] [--children 8] [--save-every 25]

The same small Python app (bench/workers/stateful.py, flup both ways) whose
every request reads and updates a ~100 KB per-user state:

- psd: one session worker per user keeps the state in memory, saving it
  through PSD_STATE_URL every `--save-every` requests (StateStore embedded:
  fsynced) and when stopped; a restarted or resumed session loads it back.
- nginx + Redis: the usual stateless design. A flup pre-fork pool of
  `--children` processes behind nginx (`fastcgi_pass`) loads the user's state
  from a real redis-server on each request and stores it back.

The same wrk (-t2 -c32, a Lua script cycling through `--users` cookies) on
both, alternating for the rounds. Reported per side: req/s (median, rounds,
p99), the CPU time per request of everything on that side (psd and its
workers; nginx, the pool and redis-server, from /proc/PID/stat), and the
memory of the same processes after the run (PSS: shared pages
counted once). Loopback only.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Proc, free_port, wait_port, wrk  # noqa: E402

APP = ROOT / "bench/workers/stateful.py"
TICKS = os.sysconf("SC_CLK_TCK")


def tree(root):
    """`root` and all its descendants (pids)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(child for child, p in parent.items() if p == pid)
    return found


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def memory_mib(pids):
    """Proportional set size: pages shared between processes (a pre-fork
    pool's, libpython's) counted once across them, not once per process."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
    return total / 1024


def cookie_script(work, name, cookies):
    script = work / f"{name}.lua"
    listed = ",\n".join(f'  "{c}"' for c in cookies)
    script.write_text(f"local cookies = {{\n{listed}\n}}\nlocal n = 0\n"
                      "request = function()\n  n = n + 1\n"
                      '  return wrk.format("GET", "/", { ["Cookie"] = cookies[(n % #cookies) + 1] })\n'
                      "end\n")
    return script


SIDES = ("psd", "nginx + Redis")


def measure(work, psd_bin, rounds, seconds, users=64, children=8, save_every=25, conns=32):
    """Both designs under the same wrk, alternating: {side: [wrk result
    with cpu_ms (per request), mib (PSS) and procs]}."""
    procs = []
    try:
        # The stateless side: redis-server, the pool, nginx.
        redis_port = free_port()
        redis = Proc(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
        procs.append(redis)
        pool_port = free_port()
        pool = Proc(["python3", str(APP)], env={**os.environ, "BENCH_REDIS_PORT": str(redis_port),
                                                "BENCH_BIND_PORT": str(pool_port),
                                                "BENCH_CHILDREN": str(children)})
        procs.append(pool)
        nginx_port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        (work / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{nginx_port};
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_pass 127.0.0.1:{pool_port};
        }}
    }}
}}
""")
        nginx = Proc(["/usr/sbin/nginx", "-c", str(work / "nginx.conf"), "-p", f"{work}/", "-g", "daemon off;"],
                     stderr=subprocess.DEVNULL)
        procs.append(nginx)

        # psd: a session worker per user.
        psd_port = free_port()
        (work / "psd.conf").write_text(f"""Listen 127.0.0.1:{psd_port}
DataDir {work}/data
LogLevel warn
<Location />
    Worker fastcgi {APP}
    SetEnv BENCH_SAVE_EVERY {save_every}
    SessionTimeout 1h
    # Every user comes from 127.0.0.1 here.
    MaxSessionsPerClient 100000
</Location>
""")
        psd = Proc([str(psd_bin), "serve", "-c", str(work / "psd.conf")],
                   stderr=open(work / "psd.log", "w"))
        procs.append(psd)
        for port in (redis_port, pool_port, nginx_port, psd_port):
            wait_port(port)
        cookies = []
        for _ in range(users):
            head = subprocess.run(["curl", "-sf", "-D", "-", "-o", "/dev/null", f"http://127.0.0.1:{psd_port}/"],
                                  capture_output=True, text=True, check=True).stdout
            cookies.append(re.search(r"(?i)set-cookie: ([^;]+)", head).group(1))
        sides = {
            SIDES[0]: (psd_port, cookie_script(work, "psd", cookies)),
            SIDES[1]: (nginx_port, cookie_script(work, "redis", [f"sid=user{i}" for i in range(users)])),
        }

        def pids(name):
            if name == SIDES[0]:
                return tree(psd.p.pid)
            return tree(nginx.p.pid) + tree(pool.p.pid) + tree(redis.p.pid)

        # Warm up: every user's state exists on both sides.
        for name, (port, script) in sides.items():
            r = wrk(f"http://127.0.0.1:{port}/", conns, min(2, seconds), script=script)
            assert r["non2xx"] == 0, (name, r)
        results = {name: [] for name in sides}
        for _ in range(rounds):
            for name, (port, script) in sides.items():
                group = pids(name)
                before = cpu_seconds(group)
                r = wrk(f"http://127.0.0.1:{port}/", conns, seconds, script=script)
                assert r["non2xx"] == 0, (name, r)
                r["cpu_ms"] = (cpu_seconds(group) - before) * 1000 / (r["rps"] * seconds)
                r["mib"] = memory_mib(pids(name))
                r["procs"] = len(group)
                results[name].append(r)
        return results
    finally:
        for p in reversed(procs):
            p.__exit__(None, None, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--children", type=int, default=8, help="the stateless side's pre-fork pool")
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--conns", type=int, default=32)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "psd", "--bins"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="psd-stateful-"))
    results = measure(work, ROOT / "target/release/psd", args.rounds, args.seconds, args.users, args.children,
                      args.save_every, args.conns)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print(f"# bench/stateful.py --rounds {args.rounds} --seconds {args.seconds} --users {args.users} "
          f"--children {args.children} --save-every {args.save_every}\n")
    print(f"~100 KB of state per user, {args.users} users, wrk -t2 -c{args.conns}.\n")
    print("| design | req/s (median) | rounds | p99 ms | CPU ms / request | memory MiB, PSS (processes) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in results.items():
        rounds = ", ".join(f"{r['rps']:.0f}" for r in rs)
        print(f"| {name} | {med(name, 'rps'):,.0f} | {rounds} | {med(name, 'p99'):.2f} | "
              f"{med(name, 'cpu_ms'):.3f} | {med(name, 'mib'):.0f} ({rs[-1]['procs']}) |")
    psd_rps, other = med(SIDES[0], "rps"), med(SIDES[1], "rps")
    print(f"\npsd / nginx + Redis = {psd_rps / other:.2f}x req/s; CPU per request "
          f"{med(SIDES[1], 'cpu_ms') / med(SIDES[0], 'cpu_ms'):.2f}x less")


if __name__ == "__main__":
    main()
