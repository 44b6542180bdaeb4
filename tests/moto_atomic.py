"""`moto_server`, with conditional requests made atomic, as S3 makes them.

moto checks `If-None-Match: *` / `If-Match` and then stores the object in two steps with no
lock between them (moto/s3/responses.py, put), so two writers racing for one lease object
could both win under load: once in a full suite on two workers, two of ten contenders won one
generation. S3 guarantees that only one conditional write succeeds; a lease is arbitrated by
exactly that guarantee. This runs moto's own WSGI application and request handler unchanged,
except that requests carrying a condition are handled one at a time.

    python tests/moto_atomic.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

CONDITIONS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH")


class Atomic:
    """WSGI middleware: one conditional request at a time, the others untouched."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not any(environ.get(h) for h in CONDITIONS):
            return self.app(environ, start_response)
        with self.lock:  # the body is read and the answer made before the next one starts
            return list(self.app(environ, start_response))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server does: URLs it returns
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, Atomic(app), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
