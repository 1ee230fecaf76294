"""A real HTTP server on 127.0.0.1 for download tests, started and stopped by the test.

It serves bytes by request path (query included), honours Range requests (206 + Content-Range, 416 past the
end), counts the body bytes it sent per path, and can be told to answer an error status, drop the connection
after some bytes, or stall, for the next N requests of a path. `zip_tree` and `tar_tree` pack a fixture tree
the way the real archives are laid out (members under a chosen prefix).
"""
import io
import re
import socket
import tarfile
import threading
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Fault:
    status: int | None = None
    drop_after: int | None = None
    stall: float = 0.0


class FileServer:
    """`with FileServer() as s: s.add("/a.zip", data); s.url("/a.zip")`; faults via fail/drop/stall."""

    def __init__(self):
        self.files, self.faults = {}, defaultdict(list)
        self.served, self.requests = Counter(), []
        self._lock = threading.Lock()
        self._httpd = None

    def add(self, path, data):
        self.files[path] = bytes(data)

    def url(self, path=""):
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def fail(self, path, status, times=1):
        self.faults[path] += [Fault(status=status)] * times

    def drop(self, path, after, times=1):
        self.faults[path] += [Fault(drop_after=after)] * times

    def stall(self, path, seconds, times=1):
        self.faults[path] += [Fault(stall=seconds)] * times

    def ranges(self, path):
        """The Range header of every request of `path` so far (None: no Range)."""
        return [r for p, r in self.requests if p == path]

    def _next_fault(self, path):
        with self._lock:
            return self.faults[path].pop(0) if self.faults[path] else Fault()

    def __enter__(self):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path, wanted = self.path, self.headers.get("Range")
            with server._lock:
                server.requests.append((path, wanted))
            fault = server._next_fault(path)
            if fault.status:
                return self._empty(fault.status)
            if path not in server.files:
                return self._empty(404)
            data = server.files[path]
            start, end, status = 0, len(data) - 1, 200
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
            if m:
                start, end, status = int(m[1]), min(int(m[2] or end), end), 206
                if start >= len(data):
                    return self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
            body = data[start:end + 1]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.end_headers()
            if fault.stall:
                time.sleep(fault.stall)
            if fault.drop_after is not None:
                body = body[:fault.drop_after]
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except OSError:  # the client gave up (a stall past its timeout)
                self.close_connection = True
                return
            with server._lock:
                server.served[path] += len(body)
            if fault.drop_after is not None or fault.stall:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        def _empty(self, status, headers=None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def _members(folder, prefix):
    folder = Path(folder)
    return [(p, prefix + p.relative_to(folder).as_posix()) for p in sorted(folder.rglob("*")) if p.is_file()]


def zip_tree(folder, prefix="", extra=()):
    """The bytes of a zip of every file under `folder`, named `prefix` + its relative path, plus (name, bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, name in _members(folder, prefix):
            zf.write(path, name)
        for name, data in extra:
            zf.writestr(name, data)
    return buf.getvalue()


def tar_tree(folder, prefix=""):
    """The bytes of a .tar.gz of every file under `folder`, named `prefix` + its relative path."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path, name in _members(folder, prefix):
            tf.add(path, name)
    return buf.getvalue()
