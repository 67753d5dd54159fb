"""Ingest of the demo: receives MPEG-TS over UDP on the given ports and keeps a count of
datagrams per port in a JSON file."""
import json
import selectors
import socket
import sys
import time

out = sys.argv[1]
ports = [int(p) for p in sys.argv[2:]]
sel = selectors.DefaultSelector()
counts = {p: 0 for p in ports}
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", p))
    sel.register(s, selectors.EVENT_READ, p)
last = 0.0
while True:
    for key, _ in sel.select(timeout=0.2):
        key.fileobj.recv(65536)
        counts[key.data] += 1
    if time.time() - last > 0.2:
        with open(out + ".tmp", "w") as f:
            json.dump(counts, f)
        import os
        os.replace(out + ".tmp", out)
        last = time.time()
