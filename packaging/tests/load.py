#!/usr/bin/env python3
"""Steady HTTP load for rolling-restart.sh: GETs on the given paths through nginx, at a fixed
total rate, over keep-alive connections (a refused or dropped connection is a failure and
is reopened), until SIGTERM/SIGINT or --max-seconds. Every answer that is not 200 and every
transport error counts as failed. On exit prints one JSON summary line on stdout.

    load.py --base https://127.0.0.1:PORT --cacert CERT.pem --paths /health/ready,/health/live \
            [--threads 8] [--rate 400] [--max-seconds 300]

An https base is verified against --cacert (the test's self-signed certificate).
"""

import argparse
import http.client
import json
import signal
import ssl
import sys
import threading
import time
import urllib.parse

ap = argparse.ArgumentParser()
ap.add_argument("--base", required=True)
ap.add_argument("--paths", default="/health/ready,/health/live")
ap.add_argument("--threads", type=int, default=8)
ap.add_argument("--rate", type=float, default=400.0, help="requests per second, all threads")
ap.add_argument("--max-seconds", type=float, default=300.0)
ap.add_argument("--timeout", type=float, default=10.0)
ap.add_argument("--cacert", help="PEM file the https server's certificate must chain to")
args = ap.parse_args()

url = urllib.parse.urlsplit(args.base)
paths = [p for p in args.paths.split(",") if p]
tls = ssl.create_default_context(cafile=args.cacert) if url.scheme == "https" else None
stop = threading.Event()
lock = threading.Lock()
stats = {"total": 0, "failed": 0, "by_path": {p: {"total": 0, "failed": 0} for p in paths}}
failures = []  # first few, for the report
per_second = {}


def on_signal(_sig, _frame):
    stop.set()


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def record(path, ok, detail, started):
    sec = int(started - t0)
    with lock:
        stats["total"] += 1
        stats["by_path"][path]["total"] += 1
        per_second.setdefault(sec, [0, 0])[0] += 1
        if not ok:
            stats["failed"] += 1
            stats["by_path"][path]["failed"] += 1
            per_second[sec][1] += 1
            if len(failures) < 20:
                failures.append({"t": round(started - t0, 3), "path": path, "detail": detail})


def worker(idx):
    interval = args.threads / args.rate
    conn = None
    n = 0
    next_at = time.monotonic() + (idx / args.rate)
    while not stop.is_set():
        now = time.monotonic()
        if now < next_at:
            stop.wait(next_at - now)
            continue
        next_at += interval
        if next_at < now - 1.0:  # fell far behind: do not burst to catch up
            next_at = now + interval
        path = paths[(idx + n) % len(paths)]
        n += 1
        started = time.monotonic()
        try:
            if conn is None:
                if tls is not None:
                    conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=args.timeout, context=tls)
                else:
                    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=args.timeout)
            conn.request("GET", path, headers={"X-Request-Id": f"load-{idx}-{n}"})
            res = conn.getresponse()
            res.read()
            if res.status == 200:
                record(path, True, None, started)
            else:
                record(path, False, f"HTTP {res.status}", started)
            if res.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 - every transport error is a failed request
            record(path, False, f"{type(e).__name__}: {e}", started)
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


t0 = time.monotonic()
threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.threads)]
for t in threads:
    t.start()
stop.wait(args.max_seconds)
stop.set()
for t in threads:
    t.join(args.timeout + 1)
elapsed = time.monotonic() - t0
rates = [v[0] for k, v in sorted(per_second.items()) if k < int(elapsed)]
summary = {
    "seconds": round(elapsed, 1),
    "total": stats["total"],
    "failed": stats["failed"],
    "by_path": stats["by_path"],
    "rps_mean": round(stats["total"] / elapsed, 1) if elapsed else 0,
    "rps_min_per_second": min(rates) if rates else 0,
    "failures": failures,
}
print(json.dumps(summary), flush=True)
sys.exit(0)
