"""S3 test infrastructure: a real moto server in a subprocess, and a fault proxy.

Used by pytest (fixtures in s3fixtures.py) and by bench/ scripts (tests/ on
sys.path).  MotoServer is the S3 endpoint; FaultProxy sits between a store and
moto to add latency, inject S3 errors, or drop off the network.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.client
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http import HTTPStatus
from io import BufferedReader
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
# Dummy credentials and a fixed region; no user config, profile or instance metadata.
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


# Settings that would point boto3 elsewhere.
UNSET_AWS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def s3_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A full environment (base, default os.environ) with the dummy AWS settings, for
    subprocesses that talk to moto."""
    env = dict(os.environ if base is None else base)
    for name in UNSET_AWS:
        env.pop(name, None)
    env.update(DUMMY_AWS)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """`moto_server` on a free loopback port, ready when the constructor returns."""

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="moto-")
        self.log = Path(self._dir.name) / "moto.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(self.port)], env=s3_env(),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + start_timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not start:\n{self._log_tail()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            conn.close()

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    @functools.cached_property
    def client(self) -> Any:
        """A boto3 S3 client straight to moto (no proxy), made once: making one takes
        a few hundred milliseconds."""
        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1").client("s3", endpoint_url=self.url)

    def make_bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (frees moto's memory)."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                self.client.delete_objects(Bucket=name, Delete={"Objects": keys})
        self.client.delete_bucket(Bucket=name)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections open, nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()


def _error_body(status: int, code: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{HTTPStatus(status).phrase} (injected by FaultProxy)</Message>"
            f"<RequestId>faultproxy</RequestId></Error>").encode()


def _read_head(f: BufferedReader) -> list[bytes] | None:
    """The start line and header lines of one HTTP message; None at a clean EOF."""
    lines: list[bytes] = []
    while True:
        line = f.readline(65537)
        if not line:
            if lines:
                raise ConnectionError("connection closed inside a message head")
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                return lines
            continue   # tolerate stray blank lines between messages
        lines.append(line)


def _header(lines: list[bytes], name: bytes) -> bytes | None:
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class _Pipe:
    """One client connection and its upstream connection, relayed in one thread."""

    BUF = 1 << 20

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.cin = client.makefile("rb", buffering=self.BUF)
        self.upstream: socket.socket | None = None
        self.uin: BufferedReader | None = None
        self.buf = memoryview(bytearray(self.BUF))
        self.thread = threading.Thread(target=self.run, name="faultproxy-pipe", daemon=True)

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]

    def run(self) -> None:
        try:
            while self.serve_one():
                pass
        except (OSError, ValueError):
            pass   # a peer went away or garbled a message, or down() cut the connection
        finally:
            self.close_upstream()
            self.cin.close()
            self.client.close()
            self.proxy._forget(self)

    def close_upstream(self) -> None:
        if self.uin is not None:
            self.uin.close()
        if self.upstream is not None:
            self.upstream.close()
        self.upstream = self.uin = None

    def relay(self, src: BufferedReader, dst: socket.socket | None, n: int) -> None:
        """n bytes from src to dst (None: discard)."""
        while n > 0:
            got = src.readinto1(self.buf[:min(n, self.BUF)])
            if not got:
                raise ConnectionError("connection closed inside a body")
            if dst is not None:
                dst.sendall(self.buf[:got])
            n -= got

    def relay_chunked(self, src: BufferedReader, dst: socket.socket | None) -> None:
        while True:
            line = src.readline(65537)
            if not line:
                raise ConnectionError("connection closed inside a chunked body")
            if dst is not None:
                dst.sendall(line)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            self.relay(src, dst, size + 2)   # the chunk and its CRLF
        while True:   # trailers, then the empty line
            line = src.readline(65537)
            if not line:
                raise ConnectionError("connection closed inside a chunked body")
            if dst is not None:
                dst.sendall(line)
            if line in (b"\r\n", b"\n"):
                return

    def relay_body(self, head: list[bytes], src: BufferedReader,
                   dst: socket.socket | None) -> None:
        if (_header(head, b"transfer-encoding") or b"").lower().endswith(b"chunked"):
            self.relay_chunked(src, dst)
        else:
            self.relay(src, dst, int(_header(head, b"content-length") or 0))

    def serve_one(self) -> bool:
        """Relay one request and its response; False when the connection is done."""
        head = _read_head(self.cin)
        if head is None:
            return False
        method = head[0].split()[0].decode()
        target = head[0].split()[1].decode()
        if (_header(head, b"expect") or b"").lower() == b"100-continue":
            # answer it here so the client sends its body at once, and forward without it
            self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            head = [line for line in head if not line.lower().startswith(b"expect:")]
        failure = self.proxy._admit(method, target)
        if failure is not None:
            self.relay_body(head, self.cin, None)
            status, code = failure
            body = b"" if method == "HEAD" else _error_body(status, code)
            self.client.sendall(
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                f"x-amz-request-id: faultproxy\r\n\r\n".encode() + body)
            return True
        if self.proxy.delay:
            time.sleep(self.proxy.delay)
        if self.upstream is not None and select.select([self.upstream], [], [], 0)[0]:
            self.close_upstream()   # readable while idle: upstream closed it, do not reuse
        if self.upstream is None:
            self.upstream = socket.create_connection(self.proxy._upstream)
            self.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.uin = self.upstream.makefile("rb", buffering=self.BUF)
        assert self.uin is not None
        self.upstream.sendall(b"".join(head) + b"\r\n")
        self.relay_body(head, self.cin, self.upstream)
        while True:
            reply = _read_head(self.uin)
            if reply is None:
                raise ConnectionError("upstream closed before replying")
            status = int(reply[0].split()[1])
            if status >= 200:
                break   # 1xx: interim, already answered or not wanted by the client
        self.client.sendall(b"".join(reply) + b"\r\n")
        close_after = (_header(reply, b"connection") or b"").lower() == b"close" \
            or reply[0].startswith(b"HTTP/1.0")
        if method == "HEAD" or status in (204, 304):
            pass
        elif _header(reply, b"content-length") is None and _header(
                reply, b"transfer-encoding") is None:
            # delimited by the end of the connection: relay it all, then end both
            while got := self.uin.readinto1(self.buf):
                self.client.sendall(self.buf[:got])
            return False
        else:
            self.relay_body(reply, self.uin, self.client)
        if close_after:
            self.close_upstream()
        return (_header(head, b"connection") or b"").lower() != b"close"


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of an S3 endpoint, with fault knobs.

    ``delay`` seconds are added before forwarding each request; ``fail_next`` answers
    requests with an S3 error instead of forwarding them; ``down``/``up`` take the
    proxy off the network and back on the same port.  ``requests`` counts requests
    by method and ``seen`` lists (method, target) in order.
    """

    def __init__(self, upstream_url: str) -> None:
        parsed = urlparse(upstream_url)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.delay = 0.0
        self.requests: collections.Counter[str] = collections.Counter()
        self.seen: list[tuple[str, str]] = []
        self._failures: collections.deque[tuple[int, str]] = collections.deque()
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.port = 0
        self.up()
        self.url = f"http://127.0.0.1:{self.port}"

    def fail_next(self, n: int, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next n requests with this S3 error, without forwarding them."""
        with self._lock:
            self._failures.extend([(status, code)] * n)

    def up(self) -> None:
        """Accept connections (again, on the same port)."""
        with self._lock:
            if self._listener is not None:
                return
            # create_server sets SO_REUSEADDR: the port is ours again at once after down()
            self._listener = socket.create_server(("127.0.0.1", self.port), backlog=128)
            self.port = self._listener.getsockname()[1]
            self._acceptor = threading.Thread(target=self._accept, args=(self._listener,),
                                              name="faultproxy-accept", daemon=True)
            self._acceptor.start()

    def down(self) -> None:
        """Refuse new connections and drop every open one."""
        with self._lock:
            listener, acceptor, self._listener = self._listener, self._acceptor, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
            assert acceptor is not None
            acceptor.join()
            listener.close()
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            for s in pipe.sockets():
                with contextlib.suppress(OSError):   # already closed by its thread
                    s.shutdown(socket.SHUT_RDWR)   # its thread sees EOF and closes it

    def close(self) -> None:
        self.down()
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            pipe.thread.join(10)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(self, client)
            with self._lock:
                self._pipes.add(pipe)
            pipe.thread.start()

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def _admit(self, method: str, target: str) -> tuple[int, str] | None:
        """Count a request; the failure to answer it with, if one is due."""
        with self._lock:
            self.requests[method] += 1
            self.seen.append((method, target))
            return self._failures.popleft() if self._failures else None
