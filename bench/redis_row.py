#!/usr/bin/env python3
"""CPU accounting for the `redis` row of `forklift compare offload`.

Starts the row's set-up by hand: a `forklift serve builtin:slowlog` with no slow work
(`none`), and for `redis` a redis-server (appendonly yes), one `forklift worker
builtin:slowlog --offload-workers 1024` and a `forklift serve builtin:slowlog --offload
redis --no-run-tasks`. Then runs rounds of `forklift bench -n N -c C --no-keepalive`,
alternating the two servers, each redis round waiting until its tasks are recorded in
LOG.done (as the row does). For every round it prints the rate and the CPU-seconds per
1,000 requests each process used during the round (from /proc/PID/task/*/schedstat,
and getrusage for the load generator), and the CPU the worker and Redis used after it
(running the tasks to their end); at the end the medians and Redis's commandstats.

    bench/redis_row.py [-n 1000] [-c 50] [--rounds 7] [--appendfsync everysec|always]

Needs redis-server, redis-cli and a release build (cargo build --release). Loads only
127.0.0.1; every round is bounded in requests.
"""
import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("-n", type=int, default=1000, help="requests per round")
ap.add_argument("-c", type=int, default=50, help="requests in flight")
ap.add_argument("--rounds", type=int, default=7)
ap.add_argument("--appendfsync", default="everysec", choices=["everysec", "always"])
ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/forklift"))
args = ap.parse_args()

work = tempfile.mkdtemp(prefix="forklift-redis-row-")
procs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """CPU time of every thread of `pid` so far (nanosecond resolution)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # the thread ended meanwhile
    return total / 1e9


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def start(cmd, log, banner):
    out = open(log, "w")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out)
    procs.append(p)
    for _ in range(300):
        if p.poll() is not None:
            sys.exit(f"{cmd[0]} {cmd[1]} exited: {open(log).read()}")
        if banner in open(log).read():
            return p
        time.sleep(0.05)
    sys.exit(f"{cmd[0]} {cmd[1]} did not start: {open(log).read()}")


def serve(name, extra):
    d = os.path.join(work, name)
    os.makedirs(d)
    port = free_port()
    p = start([args.bin, "serve", "builtin:slowlog", "--http", f"127.0.0.1:{port}",
               "--model", "epoll", "--disable-logging", "--offload-queue", "20000",
               "--slowlog-file", f"{d}/slow.log"] + extra, f"{d}/serve.log", "listening")
    return p, f"http://127.0.0.1:{port}/", f"{d}/slow.log.done"


def lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


try:
    rport = free_port()
    rdir = os.path.join(work, "redis")
    os.makedirs(rdir)
    redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes", "--appendfsync", args.appendfsync, "--dir", rdir,
                   "--logfile", f"{rdir}/redis.log"], f"{rdir}/redis.log", "Ready to accept")
    rurl = f"redis://127.0.0.1:{rport}/0"
    wlog = os.path.join(work, "worker")
    os.makedirs(wlog)
    none, none_url, _ = serve("none", ["--offload", "inline", "--task-seconds", "0"])
    scen = {"none": {"url": none_url, "pids": {"server": none.pid}, "done": None}}
    worker = start([args.bin, "worker", "builtin:slowlog", "--redis-url", rurl,
                    "--task-seconds", "1", "--offload-workers", "1024",
                    "--slowlog-file", f"{wlog}/slow.log"], f"{wlog}/worker.log", "running queue")
    srv, url, _ = serve("redis-serve", ["--offload", "redis", "--redis-url", rurl,
                                        "--no-run-tasks", "--task-seconds", "1"])
    scen["redis"] = {"url": url, "done": f"{wlog}/slow.log.done",
                     "pids": {"server": srv.pid, "redis": redis.pid, "worker": worker.pid}}
    accepted = {"none": 0, "redis": 0}
    results = {"none": [], "redis": []}

    def round_of(name, n, keep):
        s = scen[name]
        before = {k: cpu_seconds(p) for k, p in s["pids"].items()}
        load_before = children_cpu()
        out = subprocess.run([args.bin, "bench", "-q", "-n", str(n), "-c", str(args.c),
                              "--no-keepalive", s["url"]], capture_output=True, text=True).stdout
        during = {k: cpu_seconds(p) - before[k] for k, p in s["pids"].items()}
        during["load generator"] = children_cpu() - load_before
        rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
        if re.search(r"Non-2xx responses:\s+[1-9]", out) or re.search(r"Failed requests:\s+[1-9]", out):
            sys.exit(f"{name}: failed or non-2xx answers:\n{out}")
        accepted[name] += n
        mid = {k: cpu_seconds(p) for k, p in s["pids"].items()}
        t = time.time()
        if s["done"]:
            while lines(s["done"]) < accepted[name]:
                if time.time() - t > 120:
                    sys.exit(f"{name}: tasks not done after 120 s")
                time.sleep(0.005)
        waited = time.time() - t
        after = {k: cpu_seconds(p) - mid[k] for k, p in s["pids"].items()}
        if keep:
            results[name].append((rps, during))
            per = " ".join(f"{k} {v * 1000 / n:.4f}" for k, v in during.items())
            then = " ".join(f"{k} {v * 1000 / n:.4f}" for k, v in after.items() if v > 0.0005)
            print(f"{name:5} {rps:8.0f} req/s | CPU-s per 1000 requests during the round: {per}"
                  + (f" | after it (tasks ran to their end in {waited:.2f} s): {then}" if s["done"] else ""),
                  flush=True)

    for name in scen:
        round_of(name, 100, False)  # warm-up, as the row does
    for _ in range(args.rounds):
        for name in scen:
            round_of(name, args.n, True)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\n-n {args.n} -c {args.c} --no-keepalive, {args.rounds} rounds each, "
          f"appendfsync {args.appendfsync}, load average {load}")
    med = {}
    for name, rs in results.items():
        med[name] = statistics.median(r[0] for r in rs)
        cpu = {k: statistics.median(r[1][k] for r in rs) * 1000 / args.n for k in rs[0][1]}
        total = sum(cpu.values())
        print(f"{name:5} median {med[name]:8.0f} req/s; median CPU-s per 1000 requests: "
              + ", ".join(f"{k} {v:.4f}" for k, v in cpu.items()) + f"; sum {total:.4f}")
    print(f"ratio redis/none: {med['redis'] / med['none']:.2f}")
    stats = subprocess.run(["redis-cli", "-p", str(rport), "INFO", "commandstats"],
                           capture_output=True, text=True).stdout
    calls = dict(re.findall(r"cmdstat_(\w+):calls=(\d+)", stats))
    print("Redis calls: " + ", ".join(f"{k} {calls.get(k, 0)}"
                                      for k in ["xadd", "xreadgroup", "exec", "xack", "xlen"]))
finally:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(work, ignore_errors=True)
