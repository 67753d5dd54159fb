"""Sidecar of the transcoder pod (not ffmpeg): answers the kubelet's health probes on
:8081 and posts a heartbeat to the storage gateway every half second."""
import http.server
import threading
import time
import urllib.request
import sys

GATEWAY = sys.argv[1] if len(sys.argv) > 1 else "http://gateway.storage.svc.cluster.local/heartbeat"


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


threading.Thread(target=http.server.ThreadingHTTPServer(("0.0.0.0", 8081), Health).serve_forever, daemon=True).start()
n = 0
while True:
    n += 1
    try:
        urllib.request.urlopen(urllib.request.Request(GATEWAY, data=str(n).encode(), method="PUT"), timeout=2).read()
    except Exception as e:  # blocked or not yet up: keep going, as a real sidecar would
        print("heartbeat failed:", e, flush=True)
    time.sleep(0.5)
