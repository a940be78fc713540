#!/usr/bin/env python3
"""bench/startup.py - exec-to-/startup time of the legate binary (issue: lifecycle).

Starts legate N times (an http:// upstream on 127.0.0.1, admin on a free port; legate pinned to
core 0 through taskset, whose own exec is included) and measures from just before the exec to
the first `GET /startup` that answers 200, polled from core 1 every 100 µs. Prints the median,
min and max in milliseconds, plus the binary's size and its RSS right after startup.
Usage: startup.py LEGATE_BIN [N] [MODE]; MODE `run` (default: `legate run -c FILE`, what the
image runs) or `http` (quick mode, the same setup from flags).
"""
import os
import socket
import statistics
import subprocess
import sys
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def startup_ok(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"GET /startup HTTP/1.0\r\n\r\n")
            return s.recv(64).split(b" ")[1:2] == [b"200"]
    except OSError:
        return False


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    os.sched_setaffinity(0, {1})
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    mode = sys.argv[3] if len(sys.argv) > 3 else "run"
    config = f"/tmp/legate-startup-{os.getpid()}.yaml"
    times, rss = [], []
    for _ in range(n):
        admin, listen = free_port(), free_port()
        if mode == "http":
            args = [binary, "http", "--listen", f"127.0.0.1:{listen}", "--upstream",
                    "http://127.0.0.1:9", "--admin", f"127.0.0.1:{admin}", "--access-log",
                    "off", "--workers", "1"]
        else:
            with open(config, "w") as f:
                f.write(f"admin: {{ listen: 127.0.0.1:{admin} }}\n"
                        "runtime: { workers: 1 }\naccess_log: off\nlisteners:\n"
                        f"  - {{ name: app, listen: 127.0.0.1:{listen}, "
                        "routes: [{ name: all, upstream: up }] }\n"
                        "upstreams:\n  - { name: up, url: http://127.0.0.1:9 }\n")
            args = [binary, "run", "-c", config]
        t0 = time.perf_counter()
        # legate on core 0, this poller on core 1, pausing 100 µs between tries: a poller
        # spinning on legate's core would delay the start it measures.
        p = subprocess.Popen(["taskset", "-c", "0"] + args, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = t0 + 10
        while not startup_ok(admin):
            if time.perf_counter() > deadline or p.poll() is not None:
                p.kill()
                sys.exit("legate did not start")
            time.sleep(0.0001)
        times.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.2)
        rss.append(rss_kib(p.pid))
        p.terminate()
        p.wait()
    # What the spawning itself costs (fork, taskset's exec, an exec and exit), measured the same
    # way: subtracted to get legate's own part.
    base = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["taskset", "-c", "0", "/bin/true"], check=True)
        base.append((time.perf_counter() - t0) * 1000)
    med, bmed = statistics.median(times), statistics.median(base)
    print(f"exec to /startup 200: median {med:.2f} ms "
          f"(min {min(times):.2f}, max {max(times):.2f}, n={n})")
    print(f"spawn baseline (taskset -c 0 /bin/true): median {bmed:.2f} ms; "
          f"legate's own part: {med - bmed:.2f} ms")
    if os.path.exists(config):
        os.remove(config)
    print(f"mode: {mode}")
    print(f"RSS after start: median {statistics.median(rss) / 1024:.1f} MiB")
    print(f"binary: {os.path.getsize(binary) / 1e6:.1f} MB ({binary})")


if __name__ == "__main__":
    main()
