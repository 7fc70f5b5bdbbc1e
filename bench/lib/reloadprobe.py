#!/usr/bin/env python3
"""Reload -> visible: for n in 1..COUNT, run PREPARE (untimed; writes the config that adds
route /rN), start RELOAD in the background, and poll GET /rN (a new connection per poll,
Host: bench.test) until it answers 200. Time = start of RELOAD -> first 200. Each reload also
waits for RELOAD to exit (its exit status is recorded) and takes at least --pace seconds.

Prints one JSON object per reload: {"n", "visible_us", "reload_rc", "timeout"}.
"""
import argparse, json, shlex, socket, subprocess, time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--count", type=int, default=100)
ap.add_argument("--prepare", required=True, help="shell command; {n} is the reload's number")
ap.add_argument("--reload", required=True, help="shell command; {n} is the reload's number")
ap.add_argument("--pace", type=float, default=0.1)
ap.add_argument("--timeout", type=float, default=10)
ap.add_argument("--poll-gap", type=float, default=0.0002)
a = ap.parse_args()


def status(path):
    try:
        with socket.create_connection(("127.0.0.1", a.port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
            return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    except (OSError, ValueError, IndexError):
        return 0


for n in range(1, a.count + 1):
    subprocess.run(a.prepare.replace("{n}", str(n)), shell=True, check=True)
    t_start = time.monotonic()
    proc = subprocess.Popen(a.reload.replace("{n}", str(n)), shell=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = f"/r{n}"
    visible = None
    while time.monotonic() - t_start < a.timeout:
        if status(path) == 200:
            visible = time.monotonic() - t_start
            break
        time.sleep(a.poll_gap)
    rc = proc.wait()
    print(json.dumps({"n": n, "visible_us": round(visible * 1e6) if visible is not None else None,
                      "reload_rc": rc, "timeout": visible is None}), flush=True)
    left = a.pace - (time.monotonic() - t_start)
    if left > 0:
        time.sleep(left)
