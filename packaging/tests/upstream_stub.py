#!/usr/bin/env python3
"""A stand-in API instance for nginx.sh: answers every request with a JSON echo of what it
received (method, path, headers, its own name), counts hits per path, and answers
/status/NNN with status NNN.

    upstream_stub.py NAME PORT HITS_FILE

HITS_FILE gets one line "METHOD PATH" per request, so the test can count retries.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT, HITS = sys.argv[1], int(sys.argv[2]), sys.argv[3]
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with LOCK, open(HITS, "a", encoding="utf-8") as f:
            f.write(f"{self.command} {self.path}\n")
        status = 200
        if self.path.startswith("/status/"):
            status = int(self.path.split("/")[2])
        body = json.dumps(
            {
                "upstream": NAME,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
