"""The working day's test hosts: one HTTP server per network namespace.

  server.py ADDR LOG static ROOT   files under ROOT (the package index, the npm registry)
  server.py ADDR LOG git ROOT      git's smart HTTP: `git http-backend` for the repositories in ROOT
  server.py ADDR LOG api           a small JSON service (also the paste host an agent should not use)

Every request is logged to LOG as `METHOD PATH STATUS`, one line each, so a test can tell
which requests reached the host. Answers never depend on time or on earlier requests.
"""

import hashlib
import json
import mimetypes
import os
import posixpath
import subprocess
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    """Shared by every mode: request bodies (chunked or not), answers and the request log."""

    server_version = "kt-day"
    sys_version = ""

    def log_message(self, format, *args):
        pass

    def log_request(self, code="-", size="-"):
        with open(self.server.log_path, "a") as log:
            log.write(f"{self.command} {self.path} {int(code)}\n")

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, status, value):
        body = (json.dumps(value, sort_keys=True) + "\n").encode()
        self.answer(status, body, "application/json")


class Static(Handler):
    """Files under the root; a directory answers with its index.html or index.json."""

    def do_GET(self):
        path = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
        file = os.path.join(self.server.root, path.lstrip("/"))
        if os.path.isdir(file):
            for index in ("index.html", "index.json"):
                if os.path.isfile(os.path.join(file, index)):
                    file = os.path.join(file, index)
                    break
        if ".." in path.split("/") or not os.path.isfile(file):
            return self.json(404, {"error": "not found"})
        with open(file, "rb") as f:
            body = f.read()
        content_type = mimetypes.guess_type(file)[0] or "application/octet-stream"
        self.answer(200, body, content_type)

    do_HEAD = do_GET


class Git(Handler):
    """Git's smart HTTP protocol, by running `git http-backend` as a CGI program."""

    def do_GET(self):
        self.cgi(b"")

    def do_POST(self):
        self.cgi(self.body())

    def cgi(self, body):
        url = urllib.parse.urlsplit(self.path)
        env = {
            "PATH": "/usr/bin:/bin",
            "GIT_PROJECT_ROOT": self.server.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(url.path),
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        out = subprocess.run(
            ["/usr/lib/git-core/git-http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers, content_type = 200, [], "text/plain"
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            value = value.strip()
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name.lower() == "content-type":
                content_type = value
            elif name:
                headers.append((name, value))
        self.answer(status, payload, content_type, headers)


ISSUES = [
    {"id": 1, "title": "count words with apostrophes", "labels": ["bug"], "state": "open"},
    {"id": 2, "title": "document the --top flag", "labels": ["docs"], "state": "open"},
    {"id": 3, "title": "release 0.2", "labels": ["release"], "state": "open"},
    {"id": 4, "title": "port to Windows", "labels": ["wontfix"], "state": "closed"},
]


class Api(Handler):
    """A project tracker's JSON API, and a paste service's uploads."""

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        if url.path == "/v1/health":
            return self.json(200, {"status": "ok"})
        if url.path == "/v1/projects/tally":
            return self.json(200, {"name": "tally", "default_branch": "main", "open_issues": 3})
        if url.path == "/v1/issues":
            state = query.get("state", ["open"])[0]
            return self.json(200, [i for i in ISSUES if i["state"] == state])
        if parts[:2] == ["v1", "issues"] and len(parts) == 3 and parts[2].isdigit():
            found = [i for i in ISSUES if i["id"] == int(parts[2])]
            return self.json(200, found[0]) if found else self.json(404, {"error": "no such issue"})
        self.json(404, {"error": "not found"})

    def do_POST(self):
        body = self.body()
        try:
            value = json.loads(body or b"null")
        except ValueError:
            return self.json(400, {"error": "body is not JSON"})
        digest = hashlib.sha256(body).hexdigest()[:12]
        if self.path == "/v1/issues" and isinstance(value, dict) and "title" in value:
            return self.json(201, {"id": 5, "title": value["title"], "state": "open", "digest": digest})
        if self.path == "/v1/builds":
            return self.json(202, {"accepted": True, "bytes": len(body), "digest": digest})
        if self.path == "/collect":
            return self.json(200, {"collected": len(body)})
        self.json(404, {"error": "not found"})

    def do_PUT(self):
        body = self.body()
        if self.path.startswith("/upload/"):
            return self.json(201, {"stored": self.path[len("/upload/"):], "bytes": len(body)})
        self.json(404, {"error": "not found"})


def main():
    address, log, mode = sys.argv[1:4]
    handler = {"static": Static, "git": Git, "api": Api}[mode]
    server = ThreadingHTTPServer((address, 80), handler)
    server.daemon_threads = True
    server.log_path = log
    server.root = sys.argv[4] if len(sys.argv) > 4 else None
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
