#!/usr/bin/env python3
"""A fake systemd NOTIFY_SOCKET for systemd.sh: binds a datagram socket at PATH and appends
every message it receives to LOG as "<seconds since start> <message with newlines as |>",
until SIGTERM.

    notify_listener.py PATH LOG
"""

import os
import signal
import socket
import sys
import time

path, log = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
if os.path.exists(path):
    os.unlink(path)
sock.bind(path)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
t0 = time.monotonic()
with open(log, "a", encoding="utf-8", buffering=1) as out:
    out.write("0.000 LISTENING\n")
    while True:
        data = sock.recv(4096).decode("utf-8", "replace")
        out.write(f"{time.monotonic() - t0:.3f} {data.strip().replace(chr(10), '|')}\n")
