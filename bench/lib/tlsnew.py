#!/usr/bin/env python3
"""New-connection load: every request on a new TCP + TLS connection, full handshakes only.

tlsnew.py --addr 127.0.0.1:PORT --host bench.test --path /12 --duration S --threads T
Prints one JSON line: {"conns": done, "errors": n, "seconds": s, "rate": conns/s, "tls": version}.
No session is ever offered for resumption (Python resumes only when given session=), tickets
are refused (OP_NO_TICKET), the certificate is not verified (CERT_NONE), ALPN http/1.1,
SNI = --host. The handshakes run in OpenSSL with the GIL released, so a few threads keep
the connections coming back to back.
"""
import argparse, json, socket, ssl, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--addr", required=True)
ap.add_argument("--host", default="bench.test")
ap.add_argument("--path", default="/12")
ap.add_argument("--duration", type=float, default=5)
ap.add_argument("--threads", type=int, default=4)
a = ap.parse_args()
host, port = a.addr.rsplit(":", 1)
port = int(port)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.options |= ssl.OP_NO_TICKET
ctx.set_alpn_protocols(["http/1.1"])
req = (f"GET {a.path} HTTP/1.1\r\nHost: {a.host}\r\nConnection: close\r\n\r\n").encode()
stop = time.monotonic() + a.duration
counts = []
versions = set()
lock = threading.Lock()

def worker():
    ok = err = 0
    while time.monotonic() < stop:
        try:
            with socket.create_connection((host, port), timeout=5) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=a.host) as s:
                    s.sendall(req)
                    data = b""
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if data.startswith(b"HTTP/1.1 200"):
                        ok += 1
                        if not versions:
                            versions.add(s.version())
                    else:
                        err += 1
        except (OSError, ssl.SSLError):
            err += 1
    with lock:
        counts.append((ok, err))

t0 = time.monotonic()
ts = [threading.Thread(target=worker) for _ in range(a.threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
secs = time.monotonic() - t0
ok = sum(c[0] for c in counts)
err = sum(c[1] for c in counts)
print(json.dumps({"conns": ok, "errors": err, "seconds": round(secs, 3),
                  "rate": round(ok / secs, 1), "tls": ",".join(sorted(versions))}))
