"""A counting TCP proxy on 127.0.0.1: forwards bytes unchanged, counts HTTP requests.

Each connection's client-to-server stream is parsed as HTTP/1.x: a request head, then a body
of Content-Length bytes or chunked transfer coding, then the next request. So pipelined and
keep-alive requests are counted one by one and a body that happens to contain "GET /" is not
mistaken for a request. Because the proxy relays plain TCP, SigV4 signatures (which cover the
Host header the client itself sent) stay valid.

It runs its own event loop in a daemon thread; ``count()`` snapshots the counters.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field

HOST = "127.0.0.1"
MAX_HEAD = 64 * 1024
CHUNK = 256 * 1024
CONTROL_TIMEOUT_S = 10.0


class RequestParser:
    """Incremental parser of one connection's client-to-server bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = "head"  # head | body | chunk-size | chunk-data | trailer | broken
        self._left = 0
        self.methods: Counter[str] = Counter()
        self.errors = 0

    @property
    def requests(self) -> int:
        return sum(self.methods.values())

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while buf:
            if self._state == "broken":
                buf.clear()
                return
            if self._state in ("body", "chunk-data"):
                take = min(self._left, len(buf))
                del buf[:take]
                self._left -= take
                if self._left:
                    return
                self._state = "head" if self._state == "body" else "chunk-size"
                continue
            terminator = b"\r\n\r\n" if self._state == "head" else b"\r\n"
            end = buf.find(terminator)
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._broken()
                return
            text = bytes(buf[:end])
            del buf[:end + len(terminator)]
            if self._state == "head":
                self._on_head(text)
            elif self._state == "trailer":
                if not text:
                    self._state = "head"
            else:
                self._on_chunk_size(text)

    def _on_chunk_size(self, line: bytes) -> None:
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            self._broken()
            return
        if size == 0:
            self._state = "trailer"
        else:
            self._state, self._left = "chunk-data", size + 2  # the data and its CRLF

    def _on_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        while lines and not lines[0]:  # tolerate stray CRLF between requests
            lines.pop(0)
        if not lines:
            return
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._broken()
            return
        self.methods[parts[0].decode("ascii", "replace")] += 1
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    self._broken()
                    return
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            self._state = "chunk-size"
        elif length > 0:
            self._state, self._left = "body", length
        else:
            self._state = "head"

    def _broken(self) -> None:
        self.errors += 1
        self._state = "broken"
        self._buf.clear()


@dataclass(frozen=True, slots=True)
class Counts:
    requests: int
    methods: dict[str, int]
    bytes_to_server: int
    bytes_to_client: int
    connections: int
    parse_errors: int

    def minus(self, earlier: Counts) -> Counts:
        methods = Counter(self.methods)
        methods.subtract(earlier.methods)
        return Counts(
            requests=self.requests - earlier.requests,
            methods={k: v for k, v in methods.items() if v},
            bytes_to_server=self.bytes_to_server - earlier.bytes_to_server,
            bytes_to_client=self.bytes_to_client - earlier.bytes_to_client,
            connections=self.connections - earlier.connections,
            parse_errors=self.parse_errors - earlier.parse_errors,
        )


@dataclass(eq=False)
class CountingProxy:
    target_host: str
    target_port: int
    max_connections: int = 1024
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.base_events.Server | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _methods: Counter[str] = field(default_factory=Counter)
    _bytes_up: int = 0
    _bytes_down: int = 0
    _connections: int = 0
    _errors: int = 0
    _live: set[asyncio.Task[None]] = field(default_factory=set)
    _parsers: set[RequestParser] = field(default_factory=set)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="counting-proxy",
                                        daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), loop)
        self.port = fut.result(CONTROL_TIMEOUT_S)

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                fut.result(CONTROL_TIMEOUT_S)
            except Exception:  # best effort on the way out
                pass
            loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> CountingProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count(self) -> Counts:
        with self._lock:
            methods = Counter(self._methods)
            errors = self._errors
            for parser in self._parsers:  # connections still open
                methods.update(parser.methods)
                errors += parser.errors
            return Counts(
                requests=sum(methods.values()), methods=dict(methods),
                bytes_to_server=self._bytes_up, bytes_to_client=self._bytes_down,
                connections=self._connections, parse_errors=errors,
            )

    # --- event loop side ----------------------------------------------------------------

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._live):
            task.cancel()
        if self._live:
            await asyncio.wait(list(self._live), timeout=CONTROL_TIMEOUT_S / 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._live) >= self.max_connections:
            writer.close()
            return
        self._live.add(task)
        parser = RequestParser()
        with self._lock:
            self._parsers.add(parser)
            self._connections += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                 self.target_port)
            await asyncio.gather(
                self._pump(reader, up_writer, parser),
                self._pump(up_reader, writer, None),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
            with self._lock:
                self._parsers.discard(parser)
                self._methods.update(parser.methods)
                self._errors += parser.errors
            self._live.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    parser: RequestParser | None) -> None:
        try:
            while data := await reader.read(CHUNK):
                if parser is not None:
                    with self._lock:
                        parser.feed(data)
                        self._bytes_up += len(data)
                else:
                    with self._lock:
                        self._bytes_down += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.transport.abort()


def self_test(proxy: CountingProxy, client_factory: object, bucket: str, key: str,
              heads: int = 25) -> str | None:
    """Send a known mix through the proxy; None when the count is exact, else the problem.

    ``client_factory(endpoint_url)`` must return a boto3 S3 client with retries off.
    """
    assert callable(client_factory)
    client = client_factory(proxy.endpoint_url)
    before = proxy.count()
    client.put_object(Bucket=bucket, Key=key, Body=b"x" * 70_000)
    for _ in range(heads):
        client.head_object(Bucket=bucket, Key=key)
    client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=key)
    client.close()
    got = proxy.count().minus(before)
    want = {"PUT": 1, "HEAD": heads, "GET": 1, "DELETE": 1}
    if got.methods != want or got.parse_errors:
        return f"counting proxy self-test: sent {want}, counted {got.methods} " \
               f"({got.parse_errors} parse errors)"
    return None
