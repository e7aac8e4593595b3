#!/usr/bin/env python3
"""psd under hostile clients: the figures of issue 10's hostile test, re-run.

    bench/hostile.py              all three scenarios (~1.5 minutes)
    bench/hostile.py --only flood

- silent:  12,000 connections that never send a byte, against a psd allowed
           20,000 files: how many it holds, whether a real client still gets
           in meanwhile, and when the silent ones are gone (RequestHeaderTimeout).
- owner:   the latency of a session's owner, alone and while 1,000 slowloris
           connections and 100 bodies trickled a byte at a time (to the
           owner's own session) run.
- flood:   3,000 new-session requests from 500 addresses (through a trusted
           proxy's X-Forwarded-For) while 50 new users arrive: how many users
           get a session, and keep its worker for their second request.

Loopback only; every load is bounded in count and time. Uses the release
build of psd and the Perl counter example (Debian's libfcgi-perl).
"""
import argparse
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "examples/counter-perl/counter.pl"
PSD = ROOT / "target/release/psd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Psd:
    """A psd on a free port with `body` as its configuration."""

    def __init__(self, body, nofile=20000):
        self.dir = tempfile.TemporaryDirectory(prefix="psd-hostile-")
        self.port = free_port()
        conf = Path(self.dir.name) / "psd.conf"
        conf.write_text(f"Listen 127.0.0.1:{self.port}\nDataDir {self.dir.name}/data\n{body}")
        self.log = open(Path(self.dir.name) / "psd.log", "w+")
        psd = PSD
        self.p = subprocess.Popen(
            ["sh", "-c", f'ulimit -n {nofile} && exec "$0" "$@"', str(psd), "serve", "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("psd did not start")

    def log_text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def close(self):
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.dir.cleanup()


def request(port, path="/c/", headers=(), timeout=30.0):
    """One GET on a new connection: (status, body, seconds)."""
    started = time.monotonic()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return 0, b"", time.monotonic() - started
    with s:
        extra = "".join(f"{h}\r\n" for h in headers)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    elapsed = time.monotonic() - started
    try:
        status = int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, data.split(b"\r\n\r\n", 1)[-1], elapsed


def field(body, key):
    for word in body.decode(errors="replace").split():
        if word.startswith(key + "="):
            return word[len(key) + 1:]
    return None


def source(i, per=200, net=1):
    """The i-th attacker's loopback source address: `per` connections an
    address, so that MaxConnectionsPerClient (256) is not what stops them."""
    n = i // per
    return f"127.{net}.{n // 250}.{n % 250 + 1}"


def open_silent(port, n, net=1):
    """`n` connected sockets that have sent nothing, opened by 32 threads (a
    connect whose SYN the kernel drops waits a second; in parallel those
    waits overlap), left non-blocking."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        s = socket.socket()
        try:
            s.bind((source(i, net=net), 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            return s
        except OSError:
            s.close()
            return None

    with ThreadPoolExecutor(32) as pool:
        return [s for s in pool.map(one, range(n)) if s is not None]


def closed_by_peer(conns):
    gone = 0
    for s in conns:
        try:
            if s.recv(1) == b"":
                gone += 1
        except BlockingIOError:
            pass
        except OSError:
            gone += 1
    return gone


def silent():
    psd = Psd(f"<Location /c>\n  Worker fastcgi {COUNTER}\n</Location>\n")
    try:
        opened = time.monotonic()
        conns = open_silent(psd.port, 12000)
        took = time.monotonic() - opened
        time.sleep(1)
        refused = closed_by_peer(conns)
        status, _, latency = request(psd.port)
        while closed_by_peer(conns) < len(conns) and time.monotonic() - opened < 45:
            time.sleep(0.5)
        all_closed_after = time.monotonic() - opened
        gone = closed_by_peer(conns)
        log = psd.log_text()
        for s in conns:
            s.close()
        return {
            "silent connections opened": f"{len(conns)} in {took:.1f} s",
            "closed by psd within a second (MaxConnections 10000)": refused,
            "held by psd": len(conns) - refused,
            "a real request meanwhile": f"{status} in {latency * 1000:.1f} ms",
            "all silent ones closed after": f"{all_closed_after:.0f} s ({gone} of {len(conns)})",
            "EMFILE log lines": log.count("accept failed"),
        }
    finally:
        psd.close()


def owner():
    psd = Psd(f"<Location /c>\n  Worker fastcgi {COUNTER}\n</Location>\n")
    try:
        _, body, _ = request(psd.port)
        cookie = f"Cookie: psd_sid={field(body, 'session')}"

        def latencies(n=100):
            out, failed = [], 0
            for _ in range(n):
                status, _, t = request(psd.port, headers=[cookie], timeout=5)
                if status != 200:
                    failed += 1
                out.append(t * 1000)
                time.sleep(0.02)
            out.sort()
            return out, failed

        alone = latencies()
        stop = threading.Event()
        slow = open_silent(psd.port, 1000, net=2)
        for s in slow:
            s.send(b"GET /c/ HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.5)
        # Bodies trickled into the owner's own session (its id shared, say).
        bodies = []
        for i in range(100):
            s = socket.socket()
            s.bind((source(i, net=3), 0))
            s.connect(("127.0.0.1", psd.port))
            s.sendall(f"POST /c/ HTTP/1.1\r\nHost: t\r\n{cookie}\r\nContent-Length: 100000\r\n\r\nx".encode())
            bodies.append(s)

        def drip():
            while not stop.is_set():
                for s in slow:
                    try:
                        s.send(b"X")
                    except OSError:
                        pass
                for s in bodies:
                    try:
                        s.send(b"y")
                    except OSError:
                        pass
                stop.wait(0.5)

        dripper = threading.Thread(target=drip)
        dripper.start()
        time.sleep(1)
        attacked = latencies()
        stop.set()
        dripper.join()
        log = psd.log_text()
        for s in slow + bodies:
            s.close()

        def summary(measured):
            xs, failed = measured
            return (f"p50 {statistics.median(xs):.2f} ms, p99 {xs[int(len(xs) * 0.99) - 1]:.2f} ms, "
                    f"max {xs[-1]:.2f} ms, {failed} of {len(xs)} not answered within 5 s")

        return {"owner alone": summary(alone),
                "owner under 1,000 slowloris + 100 trickled bodies": summary(attacked),
                "refusals logged": log.count("connection refused")}
    finally:
        psd.close()


def flood():
    psd = Psd("TrustedProxy 127.0.0.1\nMaxSessions 200\n"
              f"<Location /c>\n  Worker fastcgi {COUNTER}\n</Location>\n")
    try:
        results = {"flood": [], "users": []}
        lock = threading.Lock()
        next_i = iter(range(3000))

        def flooder():
            while True:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                ip = f"10.9.{(i % 500) // 250}.{(i % 500) % 250 + 1}"
                status, _, _ = request(psd.port, headers=[f"X-Forwarded-For: {ip}"])
                with lock:
                    results["flood"].append(status)

        def user(i):
            ip = f"192.0.2.{i + 1}"
            status, body, _ = request(psd.port, headers=[f"X-Forwarded-For: {ip}"])
            if status != 200:
                results["users"].append("refused")
                return
            cookie = None
            # The id comes back in the body of the counter example.
            sid = field(body, "session")
            if sid:
                cookie = f"Cookie: psd_sid={sid}"
            time.sleep(1)
            status2, body2, _ = request(psd.port, headers=[f"X-Forwarded-For: {ip}", cookie])
            same = status2 == 200 and field(body2, "pid") == field(body, "pid")
            results["users"].append("kept its worker" if same else f"second request {status2}")

        started = time.monotonic()
        threads = [threading.Thread(target=flooder) for _ in range(16)]
        for t in threads:
            t.start()
        users = []
        for i in range(50):
            time.sleep(0.1)
            u = threading.Thread(target=user, args=(i,))
            u.start()
            users.append(u)
        for t in threads + users:
            t.join()
        took = time.monotonic() - started
        flood_ok = results["flood"].count(200)
        got_in = sum(1 for u in results["users"] if u != "refused")
        kept = results["users"].count("kept its worker")
        return {
            "flood requests": f"{len(results['flood'])} in {took:.1f} s: {flood_ok} got a session, "
                              f"{results['flood'].count(503)} got 503",
            "new users who got a session": f"{got_in} of 50 ({got_in * 2}%)",
            "of those, kept their worker for a second request": f"{kept} of {got_in}",
            "workers started": psd.log_text().count("worker started"),
        }
    finally:
        psd.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="silent,owner,flood")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--psd", help="a psd binary to measure instead of this tree's release build")
    args = parser.parse_args()
    global PSD
    if args.psd:
        PSD = Path(args.psd).resolve()
        args.no_build = True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 30000)), hard))
    if not args.no_build:
        subprocess.run(["cargo", "build", "--quiet", "--release", "-p", "psd"], cwd=ROOT, check=True)
    print(f"# bench/hostile.py {' '.join(sys.argv[1:])}")
    for name in args.only.split(","):
        figures = {"silent": silent, "owner": owner, "flood": flood}[name]()
        print(f"\n## {name}")
        for k, v in figures.items():
            print(f"- {k}: {v}")


if __name__ == "__main__":
    main()
