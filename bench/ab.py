#!/usr/bin/env python3
"""Two psd binaries on the warm row, alternating in one run: what a change
costs on the hot path, without the noise of two separate runs.

    git worktree add /tmp/psd-before <commit> && (cd /tmp/psd-before && cargo build --release -p psd)
    bench/ab.py /tmp/psd-before/target/release/psd target/release/psd --rounds 6 --seconds 5
    bench/ab.py target/release/psd target/release/psd --b-conf "Threads 1"   # one binary, two settings

50 sessions, each a C libfcgi worker (bench/workers/counter.c), one cookie
per wrk connection, as the warm row of bench/run.py. Loopback only.
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Proc, c_worker, free_port, new_session_cookie, wait_port, wrk  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--a-conf", default="", help="server-wide directives for a (lines separated by ';')")
    parser.add_argument("--b-conf", default="", help="the same for b")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="psd-ab-"))
    worker = c_worker(work)

    def start(name, binary, extra):
        port = free_port()
        conf = work / f"{name}.conf"
        extra = "".join(f"{line.strip()}\n" for line in extra.split(";") if line.strip())
        conf.write_text(f"Listen 127.0.0.1:{port}\nDataDir {work}/{name}-data\nLogLevel warn\n{extra}"
                        f"<Location />\n  Worker fastcgi {worker}\n  MaxSessionsPerClient 100000\n</Location>\n")
        proc = Proc([binary, "serve", "-c", str(conf)], stderr=open(work / f"{name}.log", "w"))
        wait_port(port)
        cookies = []
        for _ in range(args.sessions):
            cookies.append(new_session_cookie(f"http://127.0.0.1:{port}/"))
        script = work / f"{name}.lua"
        script.write_text("local cookies = {\n" + "\n".join(f'  "{c}",' for c in cookies) + "\n}\nlocal n = 0\n"
                          "request = function()\n  n = n + 1\n"
                          '  return wrk.format("GET", "/", { ["Cookie"] = cookies[(n % #cookies) + 1] })\nend\n')
        return proc, port, script

    a, a_port, a_script = start("a", args.a, args.a_conf)
    b, b_port, b_script = start("b", args.b, args.b_conf)
    ra, rb = [], []
    with a, b:
        for _ in range(args.rounds):
            ra.append(wrk(f"http://127.0.0.1:{a_port}/", args.sessions, args.seconds, script=a_script)["rps"])
            rb.append(wrk(f"http://127.0.0.1:{b_port}/", args.sessions, args.seconds, script=b_script)["rps"])
    ma, mb = statistics.median(ra), statistics.median(rb)
    print(f"# bench/ab.py {' '.join(sys.argv[1:])}")
    print(f"a {args.a} {args.a_conf!r}: median {ma:,.0f} req/s  {[round(x) for x in ra]}")
    print(f"b {args.b} {args.b_conf!r}: median {mb:,.0f} req/s  {[round(x) for x in rb]}")
    print(f"b / a = {mb / ma:.3f}")


if __name__ == "__main__":
    main()
