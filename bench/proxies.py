#!/usr/bin/env python3
"""psd against the proxies users would put in front of the same HTTP worker.

    bench/proxies.py --rounds 3 --seconds 4 [--nginx-workers 1] [--psd PATH]

The same Rust http worker (examples/http-rust, `target/release/http-worker`)
behind: nothing (direct, the limit), nginx `proxy_pass` with upstream
keep-alive, HAProxy (`mode http`, keep-alive), and psd (one session,
`WorkerConcurrency 64`, its cookie on every request). wrk -t2 -c32 on each,
the four alternating per round; medians, spread, p99, and the ratios psd /
nginx and psd / HAProxy. `--psd` measures another psd binary (an experiment's
build) in the same way. Loopback only.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--nginx-workers", default="1")
    parser.add_argument("--psd", default=str(ROOT / "target/release/psd"))
    parser.add_argument("--psd-b", help="a second psd binary (an experiment), alternating with the first")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "psd", "-p", "http-worker", "--bins"],
                   cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="psd-proxies-"))
    worker = ROOT / "target/release/http-worker"
    worker_port = free_port()
    procs = [Proc([str(worker)], env={**os.environ, "PORT": str(worker_port)}, stderr=subprocess.DEVNULL)]
    wait_port(worker_port)

    nginx_port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(f"""
{user}
worker_processes {args.nginx_workers};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream app {{ server 127.0.0.1:{worker_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{nginx_port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
""")
    procs.append(Proc(["/usr/sbin/nginx", "-c", str(work / "nginx.conf"), "-p", f"{work}/", "-g", "daemon off;"],
                      stderr=subprocess.DEVNULL))

    haproxy_port = free_port()
    (work / "haproxy.cfg").write_text(f"""
global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend web
    bind 127.0.0.1:{haproxy_port}
    default_backend app
backend app
    http-reuse always
    server w1 127.0.0.1:{worker_port}
""")
    procs.append(Proc(["/usr/sbin/haproxy", "-f", str(work / "haproxy.cfg")], stderr=subprocess.DEVNULL))

    psd_port = free_port()
    (work / "psd.conf").write_text(f"""Listen 127.0.0.1:{psd_port}
DataDir {work}/data
LogLevel warn
<Location />
    Worker http {worker}
    WorkerConcurrency 64
</Location>
""")
    procs.append(Proc([args.psd, "serve", "-c", str(work / "psd.conf")], stderr=open(work / "psd.log", "w")))
    psds = {"psd": psd_port}
    if args.psd_b:
        b_port = free_port()
        (work / "psd-b.conf").write_text((work / "psd.conf").read_text()
                                         .replace(f":{psd_port}", f":{b_port}").replace("/data", "/data-b"))
        procs.append(Proc([args.psd_b, "serve", "-c", str(work / "psd-b.conf")], stderr=subprocess.DEVNULL))
        psds["psd-b"] = b_port
    try:
        for port in (nginx_port, haproxy_port, *psds.values()):
            wait_port(port)
        systems = {
            "direct": (worker_port, []),
            "nginx": (nginx_port, []),
            "haproxy": (haproxy_port, []),
        }
        for name, port in psds.items():
            head = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", f"http://127.0.0.1:{port}/"],
                                  capture_output=True, text=True, check=True).stdout
            cookie = re.search(r"(?i)set-cookie: ([^;]+)", head).group(1)
            systems[name] = (port, [f"Cookie: {cookie}"])
        results = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, (port, headers) in systems.items():
                r = wrk(f"http://127.0.0.1:{port}/", args.conns, args.seconds, headers=headers)
                assert r["non2xx"] == 0, (name, r)
                results[name].append(r)
    finally:
        for p in reversed(procs):
            p.__exit__(None, None, None)
    med = {n: statistics.median(r["rps"] for r in rs) for n, rs in results.items()}
    print(f"# bench/proxies.py --rounds {args.rounds} --seconds {args.seconds} --conns {args.conns} "
          f"--nginx-workers {args.nginx_workers} --psd {args.psd}\n")
    print("| path | req/s (median) | rounds | p99 ms (median) | / direct |")
    print("| --- | --- | --- | --- | --- |")
    for name, rs in results.items():
        rounds = ", ".join(f"{r['rps']:.0f}" for r in rs)
        p99 = statistics.median(r["p99"] for r in rs)
        print(f"| {name} | {med[name]:,.0f} | {rounds} | {p99:.2f} | {med[name] / med['direct']:.2f} |")
    for name in psds:
        print(f"\n{name} / nginx = {med[name] / med['nginx']:.2f}; {name} / haproxy = {med[name] / med['haproxy']:.2f}")
    if args.psd_b:
        print(f"\npsd-b ({args.psd_b}) / psd ({args.psd}) = {med['psd-b'] / med['psd']:.3f}")


if __name__ == "__main__":
    main()
