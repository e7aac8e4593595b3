#!/usr/bin/env python3
"""psd measured against its peers on this machine, in one run.

Each row compares two systems serving the same worker program, measured
alternately for several rounds; the table gives medians, the spread
((max - min) / median) and the ratio, next to its target (issues 6 and 16).
The rows: warm (FastCGI sessions vs nginx + spawn-fcgi), routed (an http
worker through psd vs direct), cgi (vs nginx + fcgiwrap), new (new sessions
vs bare spawns), scale, proxy (vs nginx proxy_pass and HAProxy), tls (HTTPS,
new TLS connections, HTTP/2 vs nginx), stateful (session workers vs a pool
with Redis), spares (a slow-starting app's new sessions vs a warm request),
busy (the warm row with a CPU hog, both worker scheduling policies).
Results go to bench/results/<date>/ (results.md, results.json, plot.svg,
machine.txt; an --only run replaces just its rows) and README.md's table.

    bench/run.py                 full run (installs what it needs; ~20 minutes)
    bench/run.py --smoke         tiny sizes and durations, for the test suite
    bench/run.py --rounds 5 --seconds 10 --only warm,cgi

Loopback only; every load is bounded in count or time.
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_session_cookie(url):
    """The `name=value` of the session cookie psd sets on a first request to `url`."""
    head = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", url],
                          capture_output=True, text=True, check=True).stdout
    return re.search(r"(?i)set-cookie: ([^;]+)", head).group(1)


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Proc:
    """A background process in its own process group, killed on exit."""

    def __init__(self, args, **kw):
        self.p = subprocess.Popen(args, start_new_session=True, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            self.p.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        # Whatever of the group outlived its leader (nginx workers whose
        # master went first were seen to) goes too.
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return False


# The busy machine's competitor: one process that wants a whole core.
HOG = [sys.executable, "-c", "while True: pass"]

AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


class NoAutogroup:
    """Turns the kernel's autogroup scheduling off for the run, when allowed.

    With autogroups, CPU time is shared fairly between *sessions* first: psd
    (one session with all its workers) would get the share of one, while
    spawn-fcgi makes each pool process a session of its own and wins the
    share of fifty. Per-task scheduling compares the servers, not their
    session layout. The setting is put back afterwards."""

    def __enter__(self):
        self.before = AUTOGROUP.read_text().strip() if AUTOGROUP.exists() else None
        self.state = "absent" if self.before is None else "on" if self.before == "1" else "off"
        if self.before == "1":
            try:
                AUTOGROUP.write_text("0")
                self.state = "off for the run"
            except OSError:
                print("warning: cannot turn autogroup scheduling off; ratios depend on session layout",
                      file=sys.stderr)
        return self

    @staticmethod
    def unchanged():
        off = NoAutogroup()
        off.before, off.state = None, "unchanged (smoke run)"
        return off

    def __exit__(self, *exc):
        if self.before is not None and self.state == "off for the run":
            AUTOGROUP.write_text(self.before)
        return False


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid):
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            n += 1
    return n


def ms(value):
    number = float(re.match(r"[\d.]+", value).group())
    if value.endswith("us"):
        return number / 1000
    if value.endswith("ms"):
        return number
    return number * 1000


def wrk(url, conns, seconds, script=None, headers=()):
    args = ["wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    if script:
        args += ["-s", str(script)]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50, p99 = (re.search(rf"{pct}\s+([\d.]+\w*)", out) for pct in ("50%", "99%"))
    if not (rps and p50 and p99):
        raise RuntimeError(f"wrk gave no figures for {url}:\n{out}")
    result = {"rps": float(rps.group(1)), "p50": ms(p50.group(1)), "p99": ms(p99.group(1))}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(bad.group(1)) if bad else 0
    return result


def c_worker(work):
    """Compiles the C FastCGI counter (bench/workers/counter.c, libfcgi)
    into `work`; its path."""
    worker = Path(work) / "counter-c"
    subprocess.run(["gcc", "-O2", "-o", str(worker), str(ROOT / "bench/workers/counter.c"), "-lfcgi"], check=True)
    return worker


def tool_output(args):
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out)}


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="psd-bench-"))
        profile = "debug" if args.smoke else "release"
        self.bin = ROOT / "target" / profile
        self.rows = []

    # -- building -------------------------------------------------------------
    def build(self):
        release = [] if self.args.smoke else ["--release"]
        subprocess.run(["cargo", "build", "--quiet", *release, "-p", "psd", "-p", "counter-fcgi",
                        "-p", "http-worker", "--bins"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--quiet", *release, "-p", "psd", "--example", "scale"], cwd=ROOT, check=True)
        self.c_worker = c_worker(self.work)
        self.perl_worker = ROOT / "bench/workers/counter.pl"

    # -- systems --------------------------------------------------------------
    def psd(self, name, body):
        port = free_port()
        conf = self.work / f"{name}.conf"
        # MaxSpawnRate (64/s by default) is flood protection, measured by
        # bench/hostile.py; these rows measure speed and capacity.
        conf.write_text(f"Listen 127.0.0.1:{port}\nDataDir {self.work}/{name}-data\nLogLevel warn\n"
                        f"MaxSessions 2000000\nMaxSpawnRate 1000000\n{body}")
        proc = Proc([str(self.bin / "psd"), "serve", "-c", str(conf)],
                    stderr=open(self.work / f"{name}.log", "w"))
        wait_port(port)
        return proc, port

    def nginx(self, name, locations):
        port = free_port()
        d = self.work / f"nginx-{name}"
        d.mkdir()
        # As root, nginx's workers would run as nobody and could not reach the
        # root-owned sockets of spawn-fcgi and fcgiwrap.
        user = "user root;" if os.geteuid() == 0 else ""
        (d / "nginx.conf").write_text(f"""
{user}
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {locations.get("http", "")}
    server {{
        listen 127.0.0.1:{port};
        {locations["server"]}
    }}
}}
""")
        proc = Proc(["/usr/sbin/nginx", "-c", str(d / "nginx.conf"), "-p", f"{d}/", "-g", "daemon off;"],
                    stderr=subprocess.DEVNULL)
        wait_port(port)
        return proc, port

    def cookies_script(self, port, path, n):
        lines = []
        for _ in range(n):
            cookie = new_session_cookie(f"http://127.0.0.1:{port}{path}")
            lines.append(f'  "{cookie}",')
        script = self.work / f"cookies-{port}.lua"
        script.write_text("local cookies = {\n" + "\n".join(lines) + "\n}\nlocal n = 0\n"
                          "request = function()\n  n = n + 1\n"
                          f'  return wrk.format("GET", "{path}", {{ ["Cookie"] = cookies[(n % #cookies) + 1] }})\n'
                          "end\n")
        return script

    # -- measuring ------------------------------------------------------------
    def alternate(self, a, b):
        """Runs a() and b() alternately for the configured rounds."""
        ra, rb = [], []
        for _ in range(self.args.rounds):
            ra.append(a())
            rb.append(b())
        return ra, rb

    def row(self, name, metric, psd_values, peer_values, peer, target, higher_is_better=True, ratio=True, unit=""):
        med_p, med_q = statistics.median(psd_values), statistics.median(peer_values)
        spread = lambda v, m: (max(v) - min(v)) / m if m else 0.0
        if ratio:
            value = med_p / med_q if higher_is_better else med_q / med_p
        else:
            value = med_p - med_q
        self.rows.append({
            "row": name, "metric": metric, "psd": med_p, "peer": med_q, "peer_name": peer,
            "psd_spread": spread(psd_values, med_p), "peer_spread": spread(peer_values, med_q),
            "value": value, "kind": "ratio" if ratio else "difference", "unit": unit, "target": target[0],
            "met": target[1](value), "rounds": len(psd_values),
        })

    # -- the rows -------------------------------------------------------------
    @contextlib.contextmanager
    def warm_pair(self, name, sessions, psd_extra=""):
        """psd (a C worker per session) and nginx → a spawn-fcgi pool of as
        many, running: yields a load function for each, the same wrk (nginx
        gets psd's cookies too, and ignores them)."""
        secs = 1 if self.args.smoke else self.args.seconds
        pool = self.work / f"counter-c-pool-{name}"
        shutil.copy(self.c_worker, pool)
        sock = self.work / f"pool-{name}.sock"
        subprocess.run(["spawn-fcgi", "-s", str(sock), "-F", str(sessions), "--", str(pool)],
                       check=True, capture_output=True)
        try:
            psd, psd_port = self.psd(name, f"<Location />\n  Worker fastcgi {self.c_worker}\n"
                                          f"  MaxSessionsPerClient 100000\n{psd_extra}</Location>\n")
            nginx, nginx_port = self.nginx(name, {
                "http": f"upstream pool {{ server unix:{sock}; keepalive {sessions}; }}",
                # The CGI variables every nginx + FastCGI deployment sends.
                "server": "location / { fastcgi_pass pool; fastcgi_keep_conn on; "
                          "include /etc/nginx/fastcgi_params; }",
            })
            with psd, nginx:
                script = self.cookies_script(psd_port, "/", sessions)
                yield (lambda: wrk(f"http://127.0.0.1:{psd_port}/", sessions, secs, script=script),
                       lambda: wrk(f"http://127.0.0.1:{nginx_port}/", sessions, secs, script=script))
        finally:
            subprocess.run(["pkill", "-f", str(pool)])

    def warm(self):
        """50 warm sessions: psd (a C worker per session) vs nginx → spawn-fcgi pool of 50."""
        sessions = 8 if self.args.smoke else 50
        with self.warm_pair("warm", sessions) as (psd, nginx):
            a, b = self.alternate(psd, nginx)
        self.check(a + b)
        self.row("warm sessions", f"req/s, {sessions} sessions", [r["rps"] for r in a], [r["rps"] for r in b],
                 "nginx + spawn-fcgi pool", ("≥ 1.2×", lambda v: v >= 1.2))

    def busy(self):
        """The warm row on a busy machine: one CPU-bound process competing
        (as on a shared server), quiet and busy rounds alternating, workers
        under WorkerSchedulingPolicy batch (the default) and other. psd may
        lose no more of its speed to the competitor than nginx does."""
        from stateful import cpu_seconds
        sessions = 8 if self.args.smoke else 50

        def taken(load, pid, shares):
            """`load`, noting the share of a core the hog took meanwhile."""
            def run():
                cpu, start = cpu_seconds([pid]), time.monotonic()
                result = load()
                shares.append((cpu_seconds([pid]) - cpu) / (time.monotonic() - start))
                return result
            return run

        for policy in ("batch", "other"):
            with self.warm_pair(f"busy-{policy}", sessions, f"  WorkerSchedulingPolicy {policy}\n") as (psd, nginx):
                quiet_p, quiet_n = self.alternate(psd, nginx)
                hog_p, hog_n = [], []
                with Proc(HOG) as competitor:
                    pid = competitor.p.pid
                    busy_p, busy_n = self.alternate(taken(psd, pid, hog_p), taken(nginx, pid, hog_n))
            self.check(quiet_p + quiet_n + busy_p + busy_n)
            # Why a side slows: the cores left to it are the ones the hog did not take.
            self.row("busy machine", f"cores the hog took meanwhile, workers {policy}", hog_p, hog_n,
                     "nginx + spawn-fcgi pool (same hog)", ("(reported)", lambda v: True), ratio=False,
                     unit="cores")
            kept = lambda busy, quiet: statistics.median(r["rps"] for r in busy) / statistics.median(
                r["rps"] for r in quiet)
            self.row("busy machine", f"req/s with a CPU hog, workers {policy}", [r["rps"] for r in busy_p],
                     [r["rps"] for r in busy_n], "nginx + spawn-fcgi pool (same hog)", ("≥ 1.2×", lambda v: v >= 1.2))
            psd_kept, nginx_kept = kept(busy_p, quiet_p), kept(busy_n, quiet_n)
            self.rows.append({"row": "busy machine", "metric": f"share of quiet speed kept, workers {policy}",
                              "psd": psd_kept, "peer": nginx_kept, "peer_name": "nginx + spawn-fcgi pool",
                              "value": psd_kept / nginx_kept, "kind": "ratio", "unit": "",
                              "target": "≥ 0.95× (no worse than nginx, within the noise)",
                              "met": psd_kept / nginx_kept >= 0.95,
                              "rounds": len(busy_p), "psd_spread": 0, "peer_spread": 0})

    def proxy(self):
        """One http worker behind psd (one session) vs nginx proxy_pass and HAProxy (bench/proxies.py)."""
        import proxies
        secs = 1 if self.args.smoke else self.args.seconds
        work = self.work / "proxies"
        work.mkdir()
        psds = {f"psd {threads}": (self.bin / "psd", threads) for threads in ("1", "auto")}
        results = proxies.plain(work, self.bin / "http-worker", psds, self.args.rounds, secs)
        rps = {name: [r["rps"] for r in rs] for name, rs in results.items()}
        p99 = {name: [r["p99"] for r in rs] for name, rs in results.items()}
        for threads, nginx in (("1", "1 worker process"), ("auto", "worker_processes auto")):
            self.row("http proxy", f"req/s, one http worker, 32 conns, Threads {threads}", rps[f"psd {threads}"],
                     rps[f"nginx {threads}"], f"nginx proxy_pass ({nginx})", ("≥ 1.2×", lambda v: v >= 1.2))
            self.row("http proxy", f"p99 ms, 32 conns, Threads {threads}", p99[f"psd {threads}"],
                     p99[f"nginx {threads}"], f"nginx proxy_pass ({nginx})", ("≤ +0 ms (no worse)", lambda v: v <= 0),
                     ratio=False, unit="ms")
        self.row("http proxy", "req/s, one http worker, 32 conns, Threads 1", rps["psd 1"], rps["haproxy"],
                 "HAProxy (its default threads)", ("≥ 1.2×", lambda v: v >= 1.2))

    def tls(self):
        """HTTPS keep-alive, a new TLS 1.3 connection per request and HTTP/2: psd vs nginx, same certificate."""
        import proxies
        secs = 1 if self.args.smoke else self.args.seconds
        work = self.work / "tls"
        work.mkdir()
        loads = proxies.tls(work, self.bin / "http-worker", self.bin / "psd", self.args.rounds, secs)
        for load, by in loads.items():
            self.row("TLS", f"req/s, {load}, Threads 1", by["psd"], by["nginx"], "nginx (1 worker process)",
                     ("≥ 1.2×", lambda v: v >= 1.2))

    def stateful(self):
        """Why a session process at all: 100 KB of state per user kept in a session worker vs loaded from
        and stored to Redis on each request by a pool behind nginx (bench/stateful.py)."""
        import stateful
        secs = 1 if self.args.smoke else self.args.seconds
        users = 4 if self.args.smoke else 64
        work = self.work / "stateful"
        work.mkdir()
        results = stateful.measure(work, self.bin / "psd", self.args.rounds, secs, users=users)
        mine, theirs = (results[side] for side in stateful.SIDES)
        peer = "nginx + flup pool + redis-server"
        self.row("stateful app", f"req/s, 100 KB state, {users} users", [r["rps"] for r in mine],
                 [r["rps"] for r in theirs], peer, ("≥ 3×", lambda v: v >= 3))
        self.row("stateful app", "CPU ms per request, all processes (result: theirs / psd's)", [r["cpu_ms"] for r in mine],
                 [r["cpu_ms"] for r in theirs], peer, ("(reported)", lambda v: True), higher_is_better=False)
        self.row("stateful app", "memory MiB, PSS, all processes (result: theirs / psd's)", [r["mib"] for r in mine],
                 [r["mib"] for r in theirs], peer, ("(reported)", lambda v: True), higher_is_better=False)

    def spares(self):
        """A 2-second-start app's new sessions with SpareWorkers 4, next to a warm request (bench/spares.py)."""
        import spares
        sessions, gap = (3, 0.6) if self.args.smoke else (12, 0.6)
        work = self.work / "spares"
        work.mkdir()
        results = spares.measure(self.bin / "psd", work, sessions, gap)
        new, warm, _ = results[4]
        self.row("slow start", "p50 time to first byte added, ms, SpareWorkers 4", new, warm,
                 "a warm request of the same app", ("≤ +1 ms", lambda v: v <= 1.0), ratio=False, unit="ms")
        cold, _, _ = results[0]
        self.row("slow start", "p50 time to first byte added, ms, SpareWorkers 0", cold, warm,
                 "a warm request of the same app", ("(reported: the 2 s start)", lambda v: True),
                 ratio=False, unit="ms")

    def routed(self):
        """The same warm http worker through psd vs hit directly; and latency below saturation."""
        secs = 1 if self.args.smoke else self.args.seconds
        direct_port = free_port()
        direct = Proc([str(self.bin / "http-worker")], env={**os.environ, "PORT": str(direct_port)},
                      stderr=subprocess.DEVNULL)
        psd, psd_port = self.psd("routed", f"<Location /app>\n  Worker http {self.bin / 'http-worker'}\n"
                                           f"  WorkerConcurrency 64\n</Location>\n")
        with direct, psd:
            wait_port(direct_port)
            cookie = new_session_cookie(f"http://127.0.0.1:{psd_port}/app/")
            via, to = f"http://127.0.0.1:{psd_port}/app/", f"http://127.0.0.1:{direct_port}/"
            a, b = self.alternate(lambda: wrk(via, 32, secs, headers=[f"Cookie: {cookie}"]), lambda: wrk(to, 32, secs))
            la, lb = self.alternate(lambda: wrk(via, 1, secs, headers=[f"Cookie: {cookie}"]), lambda: wrk(to, 1, secs))
        self.check(a + b + la + lb)
        self.row("routed vs direct", "req/s, http worker, 32 conns", [r["rps"] for r in a], [r["rps"] for r in b],
                 "the worker directly", ("≥ 0.8×", lambda v: v >= 0.8))
        self.row("latency below saturation", "p50 added, ms (1 conn)", [r["p50"] for r in la], [r["p50"] for r in lb],
                 "the worker directly", ("≤ +0.1 ms", lambda v: v <= 0.1), ratio=False, unit="ms")
        self.row("latency below saturation", "p99 added, ms (1 conn)", [r["p99"] for r in la], [r["p99"] for r in lb],
                 "the worker directly", ("≤ +0.5 ms", lambda v: v <= 0.5), ratio=False, unit="ms")

    def cgi(self):
        """The same Perl script: persistent psd sessions vs classic CGI through nginx + fcgiwrap."""
        conns, secs = (2, 1) if self.args.smoke else (8, self.args.seconds)
        sock = self.work / "fcgiwrap.sock"
        wrap = Proc(["/usr/sbin/fcgiwrap", "-s", f"unix:{sock}", "-c", str(conns)], stderr=subprocess.DEVNULL)
        psd, psd_port = self.psd("cgi", f"<Location />\n  Worker fastcgi {self.perl_worker}\n"
                                        f"  MaxSessionsPerClient 100000\n</Location>\n")
        with wrap, psd:
            deadline = time.time() + 10
            while not sock.exists() and time.time() < deadline:
                time.sleep(0.05)
            nginx, nginx_port = self.nginx("cgi", {
                "server": f"location / {{ fastcgi_pass unix:{sock}; "
                          f"fastcgi_param SCRIPT_FILENAME {self.perl_worker}; fastcgi_param GATEWAY_INTERFACE CGI/1.1; "
                          "fastcgi_param REQUEST_METHOD $request_method; fastcgi_param QUERY_STRING $query_string; "
                          "fastcgi_param SCRIPT_NAME \"\"; fastcgi_param PATH_INFO $uri; "
                          "fastcgi_param SERVER_PROTOCOL $server_protocol; fastcgi_param REMOTE_ADDR $remote_addr; }",
            })
            with nginx:
                script = self.cookies_script(psd_port, "/", conns)
                a, b = self.alternate(
                    lambda: wrk(f"http://127.0.0.1:{psd_port}/", conns, secs, script=script),
                    lambda: wrk(f"http://127.0.0.1:{nginx_port}/", conns, secs))
        self.check(a + b)
        self.row("CGI acceleration", f"req/s, Perl script, {conns} clients", [r["rps"] for r in a],
                 [r["rps"] for r in b], "nginx + fcgiwrap (CGI)", ("≥ 30×", lambda v: v >= 30))

    def new_sessions(self):
        """Requests that each start a session vs the bare spawn + first answer."""
        n = 30 if self.args.smoke else 300
        psd, port = self.psd("new", f"<Location />\n  Worker fastcgi {self.c_worker}\n"
                                    f"  MaxSessionsPerClient 2000000\n  SessionTimeout 2s\n</Location>\n")
        with psd:
            load = str(self.bin / "http-load")
            bare = str(self.bin / "spawn-bare")
            a, b = self.alternate(lambda: tool_output([load, f"http://127.0.0.1:{port}/", str(n), "1", "new"]),
                                  lambda: tool_output([bare, str(self.c_worker), str(n)]))
            rate = [tool_output([load, f"http://127.0.0.1:{port}/", str(n * 4), "4", "new"])
                    for _ in range(self.args.rounds)]
        if any(r["non2xx"] for r in a + rate):
            raise RuntimeError("new sessions were refused")
        self.row("new sessions", "p50 time to first answer added, ms", [r["p50_ms"] for r in a],
                 [r["p50_ms"] for r in b], "bare spawn + first answer", ("≤ +1 ms", lambda v: v <= 1.0),
                 ratio=False, unit="ms")
        self.row("new sessions", "p99 time to first answer added, ms", [r["p99_ms"] for r in a],
                 [r["p99_ms"] for r in b], "bare spawn + first answer", ("(reported)", lambda v: True),
                 ratio=False, unit="ms")
        self.row("new sessions", "sessions/s (4 clients) vs bare spawns/s (1)", [r["per_s"] for r in rate],
                 [r["per_s"] for r in b], "bare spawn + first answer", ("≥ 500/s", lambda v: True))
        self.rows[-1]["met"] = statistics.median(r["per_s"] for r in rate) >= 500

    def scale(self):
        """Live process sessions (C worker) and in-process sessions; psd's RSS per session."""
        procs, inproc = (50, 2000) if self.args.smoke else (self.args.process_sessions, self.args.inproc_sessions)
        psd, port = self.psd("scale", f"<Location />\n  Worker fastcgi {self.c_worker}\n"
                                      f"  MaxSessionsPerClient 2000000\n  SessionTimeout 1h\n</Location>\n")
        with psd:
            before = rss_kib(psd.p.pid)
            out = tool_output([str(self.bin / "http-load"), f"http://127.0.0.1:{port}/", str(procs), "8", "new"])
            live = children(psd.p.pid)
            after = rss_kib(psd.p.pid)
            fd_limit = next(l.split()[3] for l in Path(f"/proc/{psd.p.pid}/limits").read_text().splitlines()
                            if l.startswith("Max open files"))
        ok = out["non2xx"] == 0 and live >= procs
        self.rows.append({"row": "scale", "metric": f"{procs} live process sessions: psd KiB per session",
                          "psd": (after - before) / max(live, 1), "peer": None,
                          "peer_name": f"{live} workers alive, {int(out['non2xx'])} refused, fd limit {fd_limit}",
                          "value": (after - before) / max(live, 1), "kind": "absolute", "unit": "KiB",
                          "target": "held, no errors",
                          "met": ok, "rounds": 1, "psd_spread": 0, "peer_spread": 0})
        port = free_port()
        server = Proc([str(self.bin / "examples/scale"), f"127.0.0.1:{port}", str(inproc * 2)], stderr=subprocess.DEVNULL)
        with server:
            wait_port(port)
            before = rss_kib(server.p.pid)
            out = tool_output([str(self.bin / "http-load"), f"http://127.0.0.1:{port}/", str(inproc), "16", "new"])
            after = rss_kib(server.p.pid)
        per = (after - before) * 1024 / inproc
        self.rows.append({"row": "scale", "metric": f"{inproc} in-process sessions: bytes per session",
                          "psd": per, "peer": None, "peer_name": f"{out['per_s']:.0f} new sessions/s",
                          "value": per, "kind": "absolute", "unit": "B", "target": "≤ 2048 B, no errors",
                          "met": per <= 2048 and out["non2xx"] == 0, "rounds": 1, "psd_spread": 0, "peer_spread": 0})

    def check(self, results):
        bad = [r.get("non2xx", 0) for r in results]
        if any(bad):
            raise RuntimeError(f"non-2xx answers during a measurement (per run: {bad})")

    # -- reporting ------------------------------------------------------------
    def machine(self):
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), platform.processor())
        mem = next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        nginx = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip()
        return (f"{os.cpu_count()} cores ({cpu}), {int(mem) // 1024 // 1024} GiB, {platform.system()} {platform.release()}; "
                f"{nginx}; autogroup scheduling {self.autogroup}; rounds={self.args.rounds}, seconds={self.args.seconds}")

    def table(self):
        return results_table(self.rows)

    def report(self):
        print(self.table())
        if self.args.smoke:
            return
        out = ROOT / "bench/results" / datetime.date.today().isoformat()
        out.mkdir(parents=True, exist_ok=True)
        machine = self.machine()
        command = "bench/run.py " + " ".join(sys.argv[1:])
        for r in self.rows:
            r["command"] = command
        # A run of some rows (--only) replaces those rows of the day's results.
        earlier = out / "results.json"
        if earlier.exists():
            measured = {r["row"] for r in self.rows}
            kept = [r for r in json.loads(earlier.read_text())["rows"] if r["row"] not in measured]
            self.rows = kept + self.rows
        table = self.table()
        commands = sorted({r.get("command", "bench/run.py") for r in self.rows})
        (out / "machine.txt").write_text(machine + "\n")
        (out / "results.json").write_text(json.dumps({"machine": machine, "rows": self.rows}, indent=2) + "\n")
        ran = "\n".join(f"`{c}`" for c in commands)
        (out / "results.md").write_text(f"# psd vs peers\n\n{machine}\n\n{ran}\n\n{table}\n\n![ratios](plot.svg)\n")
        (out / "plot.svg").write_text(self.svg())
        update_readme(out)
        print(f"\nwritten to {out}; README.md's table updated")

    def svg(self):
        """Horizontal bars of each ratio row against its target."""
        ratios = [r for r in self.rows if r["kind"] == "ratio"]
        width, bar_h, left = 760, 34, 300
        height = 60 + bar_h * len(ratios)
        scale = max([r["value"] for r in ratios] + [1.5]) * 1.1
        x = lambda v: left + (width - left - 40) * min(v, scale) / scale
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
                 '<text x="10" y="22" font-size="15">psd / peer (higher is better; 1.0 = parity)</text>',
                 f'<line x1="{x(1)}" y1="35" x2="{x(1)}" y2="{height - 10}" stroke="#888" stroke-dasharray="4"/>']
        for i, r in enumerate(ratios):
            y = 40 + i * bar_h
            color = "#2a9d4b" if r["met"] else "#d1495b"
            parts.append(f'<text x="10" y="{y + 20}">{r["row"]}: {r["metric"][:30]}</text>')
            parts.append(f'<rect x="{left}" y="{y + 6}" width="{x(r["value"]) - left:.1f}" height="{bar_h - 12}" fill="{color}"/>')
            parts.append(f'<text x="{x(r["value"]) + 4:.1f}" y="{y + 22}">{r["value"]:.2f}× (target {r["target"]})</text>')
        parts.append("</svg>\n")
        return "\n".join(parts)


def results_table(rows):
    """The rows as a Markdown table: medians, psd's spread, the result and its target."""
    lines = ["| row | metric | psd | peer | peer | result | target | met |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fmt = lambda v: "—" if v is None else (f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}")
        result = {"ratio": f"{r['value']:.2f}×", "difference": f"{r['value']:+.3f} {r['unit']}"}.get(
            r["kind"], f"{r['value']:,.0f} {r['unit']}")
        spread = f" (±{r['psd_spread'] * 50:.0f}%)" if r["rounds"] > 1 else ""
        lines.append(f"| {r['row']} | {r['metric']} | {fmt(r['psd'])}{spread} | {fmt(r['peer'])} | "
                     f"{r['peer_name']} | {result} | {r['target']} | {'yes' if r['met'] else 'NO'} |")
    return "\n".join(lines)


README_START = "<!-- bench/run.py writes this table from bench/results; do not edit -->"
README_END = "<!-- end of the generated table -->"


def update_readme(out):
    """Rewrites README.md's benchmark table from `out`'s results.json."""
    results = json.loads((out / "results.json").read_text())
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise RuntimeError(f"README.md has no generated table between {README_START!r} and {README_END!r}")
    rel = out.relative_to(ROOT)
    block = (f"{README_START}\nFrom [`{rel}/results.md`]({rel}/results.md) ({results['machine']}):\n\n"
             f"{results_table(results['rows'])}\n\n![psd / peer]({rel}/plot.svg)\n")
    readme.write_text(text[:start] + block + text[end:])


# The rows, by the names --only takes, and the Bench method of each.
ROWS = {"warm": "warm", "routed": "routed", "cgi": "cgi", "new": "new_sessions", "scale": "scale",
        "proxy": "proxy", "tls": "tls", "stateful": "stateful", "spares": "spares", "busy": "busy"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--process-sessions", type=int, default=10_000)
    parser.add_argument("--inproc-sessions", type=int, default=1_000_000)
    parser.add_argument("--only", default=",".join(ROWS))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and durations; no results written")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--readme", metavar="DIR", help="only rewrite README.md's table from DIR/results.json")
    args = parser.parse_args()
    if args.readme:
        return update_readme(Path(args.readme).resolve())
    unknown = [name for name in args.only.split(",") if name not in ROWS]
    if unknown:
        parser.error(f"--only {','.join(unknown)}: no such row; the rows are {', '.join(ROWS)}")
    if args.smoke:
        args.rounds, args.seconds = 1, 1
    if not args.no_install:
        subprocess.run(["bash", str(ROOT / "bench/install.sh")], check=True, stdout=subprocess.DEVNULL)
    bench = Bench(args)
    try:
        bench.build()
        rows = {name: getattr(bench, method) for name, method in ROWS.items()}
        with (contextlib.nullcontext(NoAutogroup.unchanged()) if args.smoke else NoAutogroup()) as autogroup:
            bench.autogroup = autogroup.state
            for name in args.only.split(","):
                rows[name]()
        bench.report()
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    main()
