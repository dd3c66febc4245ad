#!/usr/bin/env python3
"""A small API with a real SQL injection and a few forgotten files, for the
attack-tool lab (tests/tests/tools.rs): what sqlmap and gobuster look for.

    labapp.py HOST PORT

GET /api/items?id=N   rows of an SQLite table, the id pasted into the SQL
                      (injectable on purpose); a database error is answered
                      500 with the engine's message, as careless apps do.
GET /backup, /backups, /dump, /cgi-bin/
                      "forgotten" files: what a directory scanner finds.
anything else         404.

HTTP/1.1 keep-alive; one log line per request on stderr.
"""

import json
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DB = sqlite3.connect(":memory:", check_same_thread=False)
DB.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
DB.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, login TEXT, secret TEXT)")
DB.executemany(
    "INSERT INTO items VALUES (?, ?, ?)",
    [(i, f"item {i}", i * 1.5) for i in range(1, 21)],
)
DB.execute("INSERT INTO users VALUES (1, 'admin', 's3cr3t-hash')")
LOCK = threading.Lock()

FORGOTTEN = {"/backup", "/backups", "/dump", "/cgi-bin/"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body, ctype="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/api/items":
            wanted = parse_qs(url.query).get("id", ["1"])[0]
            try:
                with LOCK:
                    rows = DB.execute(
                        "SELECT id, name, price FROM items WHERE id = " + wanted
                    ).fetchall()
            except sqlite3.Error as e:
                self.answer(500, f"database error: {e}", "text/plain")
                return
            self.answer(200, json.dumps([list(r) for r in rows]))
        elif url.path in FORGOTTEN:
            self.answer(200, "-- dump of production --\n", "text/plain")
        else:
            self.answer(404, '{"error":"not found"}')

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.client_address[0], fmt % args))
        sys.stderr.flush()


if __name__ == "__main__":
    server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler)
    server.daemon_threads = True
    server.serve_forever()
