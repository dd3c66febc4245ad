#!/usr/bin/env python3
"""A small real GraphQL server for the e2e tests: graphql-core behind
http.server. Usage: graphql_server.py ADDR PORT SCHEMA.graphql

POST /graphql with a JSON body (an object, or an array: a batch), or
application/graphql; GET /graphql?query=. Failed logins are GraphQL errors
("Invalid credentials") in a 200 answer, as GraphQL servers send them."""

import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from graphql import build_schema, graphql_sync

USERS = {"7": {"id": "7", "name": "ana"}, "8": {"id": "8", "name": "bo"}}


class Root:
    def user(self, info, id):
        return USERS.get(str(id))

    def me(self, info):
        return USERS["7"]

    def products(self, info, search=None):
        return [{"id": "1", "name": "lamp"}]

    def login(self, info, username, password):
        if username == "ana" and password == "secret":
            return {"token": "t-7"}
        raise ValueError("Invalid credentials")

    def setNote(self, info, text=None):
        return True


def run(schema, req):
    if not isinstance(req, dict):
        return {"errors": [{"message": "not a request"}]}
    result = graphql_sync(
        schema,
        req.get("query") or "",
        root_value=Root(),
        variable_values=req.get("variables"),
        operation_name=req.get("operationName"),
    )
    out = {"data": result.data}
    if result.errors:
        out["errors"] = [{"message": e.message} for e in result.errors]
    return out


def handler(schema):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            self.answer(run(schema, {"query": q.get("query", [""])[0]}))

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            if self.headers.get("Content-Type", "").startswith("application/graphql"):
                self.answer(run(schema, {"query": raw.decode("utf-8", "replace")}))
                return
            try:
                req = json.loads(raw)
            except ValueError:
                self.answer({"errors": [{"message": "body is not JSON"}]})
                return
            if isinstance(req, list):
                self.answer([run(schema, r) for r in req])
            else:
                self.answer(run(schema, req))

        def log_message(self, *args):
            pass

    return H


def main():
    addr, port, sdl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(sdl) as f:
        schema = build_schema(f.read())
    ThreadingHTTPServer((addr, port), handler(schema)).serve_forever()


if __name__ == "__main__":
    main()
