"""AWS Signature Version 4 for S3 requests. Pure: time and credentials are arguments.

syncd signs its data-path requests itself because botocore spends ~1.5 ms of CPU per request
(event hooks, endpoint rules, response shapes) against ~0.05 ms here; with 100,000 small
objects that difference is minutes. S3 differs from other services in two ways that matter:
the path is encoded once, not twice, and the payload may be declared UNSIGNED-PAYLOAD (syncd
sends its own CRC checksum header for integrity instead of hashing every byte with SHA-256).
The result is checked against botocore's own signer in tests/stores/test_sigv4.py.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_UNRESERVED = "-_.~"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def encode_path(path: str) -> str:
    """RFC 3986 percent-encoding of a URL path, '/' kept; S3 signs it as sent."""
    return quote(path, safe="/" + _UNRESERVED)


def canonical_query(query: Iterable[tuple[str, str]]) -> str:
    pairs = sorted((quote(k, safe=_UNRESERVED), quote(v, safe=_UNRESERVED)) for k, v in query)
    return "&".join(f"{k}={v}" for k, v in pairs)


class Signer:
    """Signs requests for one region; caches the derived key per secret and day."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            k = f"AWS4{secret}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): k}  # one entry: days and secrets only move forward
            key = k
        return key

    def sign(
        self, method: str, host: str, path: str, query: Iterable[tuple[str, str]],
        headers: Mapping[str, str], payload_hash: str, creds: Credentials, now: datetime,
    ) -> dict[str, str]:
        """All headers to send (the given ones included), with Authorization last.

        `path` must already be encoded (`encode_path`); `now` must be UTC.
        """
        amz_date = (f"{now.year:04d}{now.month:02d}{now.day:02d}T"
                    f"{now.hour:02d}{now.minute:02d}{now.second:02d}Z")
        day = amz_date[:8]
        out = {k.lower(): str(v) for k, v in headers.items()}
        out["host"] = host
        out["x-amz-date"] = amz_date
        out["x-amz-content-sha256"] = payload_hash
        if creds.token:
            out["x-amz-security-token"] = creds.token
        names = sorted(out)
        canonical_headers = "".join(f"{n}:{' '.join(out[n].split())}\n" for n in names)
        signed = ";".join(names)
        request = "\n".join(
            (method, path, canonical_query(query), canonical_headers, signed, payload_hash))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(
            ("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()))
        signature = hmac.new(
            self._key(creds.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        out["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}")
        return out
