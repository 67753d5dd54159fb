"""Storage gateway of the demo: accepts HTTP PUT/POST uploads (HLS segments, heartbeats)
into a directory and serves them back with GET."""
import http.server
import os
import sys

ROOT = sys.argv[2] if len(sys.argv) > 2 else "/tmp/gateway"


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=ROOT, **kw)

    def _store(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(length)
        path = os.path.join(ROOT, self.path.lstrip("/").split("?")[0])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = _store
    do_POST = _store

    def log_message(self, *a):
        pass


os.makedirs(ROOT, exist_ok=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
