#!/usr/bin/env python3
"""psd against the proxies users would put in front of the same HTTP worker.

    bench/proxies.py [--rounds 3] [--seconds 4] [--psd PATH] [--psd-b PATH]
    bench/proxies.py --tls [--workers 1|auto]

The same Rust http worker (examples/http-rust, `target/release/http-worker`)
behind: nothing (direct, the limit), nginx `proxy_pass` with upstream
keep-alive (`worker_processes 1` and `auto`), HAProxy (`mode http`,
keep-alive), and psd (one session, `WorkerConcurrency 64`, its cookie on
every request) with `Threads 1` and `auto`: each psd against the nginx with as
many event-loop threads. wrk -t2 -c32 on each, all alternating per round;
medians, spread, p99, the ratios. `--psd-b` measures a second psd binary (an
experiment's build) in the same rotation. With `--tls`, nginx and psd
terminate TLS with the same self-signed certificate (`psd cert`) and three
loads run on each: keep-alive HTTPS (wrk), a new TLS connection per request
(wrk with `Connection: close`), and HTTP/2 (h2load, `-c32 -m10`,
nghttp2-client); HAProxy and direct are left out. Loopback only.
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
from run import ROOT, Proc, free_port, new_session_cookie, wait_port, wrk  # noqa: E402


def start_worker(worker):
    """Starts the Rust http worker on a free port."""
    port = free_port()
    proc = Proc([str(worker)], env={**os.environ, "PORT": str(port)}, stderr=subprocess.DEVNULL)
    wait_port(port)
    return port, [proc]


def start_nginx(work, workers, worker_port, listen_extra, location_extra):
    """nginx (`workers` worker processes) proxying to the worker with
    upstream keep-alive; `listen_extra` ends its `listen` line (TLS),
    `location_extra` adds to its location."""
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    name = f"nginx-{workers}"
    (work / f"{name}.conf").write_text(f"""
{user}
worker_processes {workers};
pid {work}/{name}.pid;
error_log {work}/{name}-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # nginx closes a connection after 1000 requests by default (HTTP/2 too);
    # h2load does not reconnect, and wrk pays a new TLS handshake: lifted.
    keepalive_requests 1000000;
    upstream app {{ server 127.0.0.1:{worker_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port}{listen_extra};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{location_extra}
        }}
    }}
}}
""")
    proc = Proc(["/usr/sbin/nginx", "-c", str(work / f"{name}.conf"), "-p", f"{work}/", "-g", "daemon off;"],
                stderr=subprocess.DEVNULL)
    return proc, port


def start_psd(binary, work, name, worker, listen="", server="", location=""):
    """psd with one `<Location />` for the worker, `WorkerConcurrency 64`;
    `listen` ends its `Listen` line, `server` and `location` add directives."""
    port = free_port()
    conf = work / f"{name}.conf"
    conf.write_text(f"""Listen 127.0.0.1:{port}{listen}
DataDir {work}/{name}-data
LogLevel warn
{server}<Location />
    Worker http {worker}
    WorkerConcurrency 64
{location}</Location>
""")
    proc = Proc([str(binary), "serve", "-c", str(conf)], stderr=open(work / f"{name}.log", "w"))
    return proc, port


def stop(procs):
    for p in reversed(procs):
        p.__exit__(None, None, None)


def plain(work, worker, psds, rounds, seconds, conns=32):
    """Plain HTTP keep-alive, wrk on each of direct, nginx with one worker
    process and with `auto`, HAProxy and the psd builds `psds` ({name:
    (binary, Threads)}), alternating: {name: [wrk result]}."""
    worker_port, procs = start_worker(worker)
    try:
        systems = {"direct": worker_port}
        for workers in ("1", "auto"):
            nginx, systems[f"nginx {workers}"] = start_nginx(work, workers, worker_port, "", """
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;""")
            procs.append(nginx)
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
        systems["haproxy"] = haproxy_port
        for name, (binary, threads) in psds.items():
            proc, systems[name] = start_psd(binary, work, name.replace(" ", "-"), worker, "", f"Threads {threads}\n")
            procs.append(proc)
        headers = {name: [] for name in systems}
        for name, port in systems.items():
            wait_port(port)
            # psd's session by its cookie, sent by wrk on every request.
            if name in psds:
                headers[name] = [f"Cookie: {new_session_cookie(f'http://127.0.0.1:{port}/')}"]
        results = {name: [] for name in systems}
        for _ in range(rounds):
            for name, port in systems.items():
                r = wrk(f"http://127.0.0.1:{port}/", conns, seconds, headers=headers[name])
                assert r["non2xx"] == 0, (name, r)
                results[name].append(r)
        return results
    finally:
        stop(procs)


def h2load(url, seconds, conns):
    """HTTP/2 requests per second with h2load: (req/s, failed)."""
    out = subprocess.run(["h2load", "-D", str(seconds), "-c", str(conns), "-m", "10", "-t", "2", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    failed = int(re.search(r"(\d+) failed", out).group(1))
    return rps, failed


TLS_LOADS = ("HTTPS keep-alive (wrk)", "new TLS connection per request (wrk)", "HTTP/2 (h2load -m10)")


def tls(work, worker, psd, rounds, seconds, conns=32, workers="1"):
    """nginx and psd terminating TLS (1.3, the same certificate, no session
    resumption) in front of the same worker: {load: {"nginx"|"psd": [req/s]}}."""
    worker_port, procs = start_worker(worker)
    try:
        subprocess.run([str(psd), "cert", "--host", "127.0.0.1", "--out", str(work)], check=True,
                       capture_output=True)
        cert, key = work / "cert.pem", work / "key.pem"
        nginx, nginx_port = start_nginx(work, workers, worker_port, f""" ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off""", "")
        procs.append(nginx)
        # The session by the client's address: wrk and h2load keep no cookies.
        proc, psd_port = start_psd(psd, work, "psd-tls", worker, " https",
                                   f"SSLCertificateFile {cert}\nSSLCertificateKeyFile {key}\nThreads {workers}\n",
                                   "    SessionKey ip\n")
        procs.append(proc)
        wait_port(nginx_port)
        wait_port(psd_port)
        systems = {"nginx": nginx_port, "psd": psd_port}
        rows = {load: {name: [] for name in systems} for load in TLS_LOADS}
        for _ in range(rounds):
            for name, port in systems.items():
                url = f"https://127.0.0.1:{port}/"
                r = wrk(url, conns, seconds)
                assert r["non2xx"] == 0, (name, r)
                rows[TLS_LOADS[0]][name].append(r["rps"])
                r = wrk(url, conns, seconds, headers=["Connection: close"])
                assert r["non2xx"] == 0, (name, r)
                rows[TLS_LOADS[1]][name].append(r["rps"])
                rps, failed = h2load(url, seconds, conns)
                # With -D, requests still in flight when time is up count as failed.
                assert failed <= conns * 10, (name, failed)
                rows[TLS_LOADS[2]][name].append(rps)
        return rows
    finally:
        stop(procs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--workers", default="1", help="--tls: nginx's worker_processes and psd's Threads")
    parser.add_argument("--psd", default=str(ROOT / "target/release/psd"))
    parser.add_argument("--psd-b", help="a second psd binary (an experiment), alternating with the first")
    parser.add_argument("--tls", action="store_true", help="HTTPS, new TLS connections and HTTP/2 rows")
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "psd", "-p", "http-worker", "--bins"],
                   cwd=ROOT, check=True)
    worker = ROOT / "target/release/http-worker"
    work = Path(tempfile.mkdtemp(prefix="psd-proxies-"))
    if args.tls:
        rows = tls(work, worker, args.psd, args.rounds, args.seconds, args.conns, args.workers)
        print(f"# bench/proxies.py --tls --rounds {args.rounds} --seconds {args.seconds} --conns {args.conns} "
              f"--workers {args.workers} --psd {args.psd}\n")
        print(f"nginx worker_processes {args.workers}, psd Threads {args.workers}.\n")
        print("| load | nginx req/s | psd req/s | psd / nginx | rounds (nginx; psd) |")
        print("| --- | --- | --- | --- | --- |")
        for load, by in rows.items():
            n, p = statistics.median(by["nginx"]), statistics.median(by["psd"])
            rounds = ", ".join(f"{x:.0f}" for x in by["nginx"]) + "; " + ", ".join(f"{x:.0f}" for x in by["psd"])
            print(f"| {load} | {n:,.0f} | {p:,.0f} | {p / n:.2f} | {rounds} |")
        return
    builds = {"psd": args.psd, **({"psd-b": args.psd_b} if args.psd_b else {})}
    psds = {f"{name} {threads}": (binary, threads) for name, binary in builds.items() for threads in ("1", "auto")}
    results = plain(work, worker, psds, args.rounds, args.seconds, args.conns)
    med = {n: statistics.median(r["rps"] for r in rs) for n, rs in results.items()}
    print(f"# bench/proxies.py --rounds {args.rounds} --seconds {args.seconds} --conns {args.conns} "
          f"--psd {args.psd}{f' --psd-b {args.psd_b}' if args.psd_b else ''}\n")
    print("nginx N: worker_processes N; psd N: Threads N.\n")
    print("| path | req/s (median) | rounds | p99 ms (median) | / direct |")
    print("| --- | --- | --- | --- | --- |")
    for name, rs in results.items():
        rounds = ", ".join(f"{r['rps']:.0f}" for r in rs)
        p99 = statistics.median(r["p99"] for r in rs)
        print(f"| {name} | {med[name]:,.0f} | {rounds} | {p99:.2f} | {med[name] / med['direct']:.2f} |")
    print()
    for name in psds:
        threads = name.rsplit(" ", 1)[1]
        print(f"- {name} / nginx {threads} = {med[name] / med['nginx ' + threads]:.2f}; "
              f"{name} / haproxy = {med[name] / med['haproxy']:.2f}")
    if args.psd_b:
        for threads in ("1", "auto"):
            print(f"- psd-b {threads} ({args.psd_b}) / psd {threads} ({args.psd}) = "
                  f"{med['psd-b ' + threads] / med['psd ' + threads]:.3f}")


if __name__ == "__main__":
    main()
