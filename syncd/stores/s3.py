"""The S3 store (aiobotocore): paged listing, streamed and ranged GETs, small records, deletes.

Writing (single or multipart PUT, resumed uploads) is `s3_upload.Uploads`, which the store
hands its client, error translation and slots. Only this package imports botocore;
`s3_errors.S3Errors` maps its errors into the SyncdError tree.
Server quirks handled here (measured in shared/design/leases.md, Part B):
- rclone answers a ranged GET with 200 and the whole object's checksum header, so botocore's
  response validation is off and syncd hashes the bytes itself (`verify.py`);
- rclone capitalises metadata keys and lists ETags unquoted: both are normalised;
- rclone's multipart ETag differs between CompleteMultipartUpload and HEAD, so a published
  multipart object is HEADed for the ETag that later listings will show.
An endpoint that answers but not as S3 (a web server's 200 page) is `NotS3`, naming the
endpoint and what came back, for the data path (s3_http) and the control plane alike
(`s3_http.expect_control_answer`, checking each raw answer botocore receives).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from hashlib import sha256
from typing import Any

import aiohttp
from botocore.exceptions import (
    NoCredentialsError,
)

from syncd.budget import ByteBudget
from syncd.config import DEFAULT_ENDPOINT, S3Config, TransferConfig
from syncd.errors import (
    AccessDenied,
    BucketMissing,
    Interrupted,
    NotFound,
    PreconditionFailed,
    SourceChanged,
    StoreError,
)
from syncd.keys import is_directory_marker, relative_key, syncd_object
from syncd.listing import (
    Algo,
    Checksum,
    Entry,
    Listing,
    epoch_s,
    normalize_etag,
    weak_etag,
)
from syncd.stores.base import Capabilities, Fence, Sink, Source, Staged
from syncd.stores.native import (
    NATIVE_MEMORY,
    NATIVE_PART,
    NATIVE_SLOTS_PER_SOCKET,
    NativeConfig,
    NativeEngine,
)
from syncd.stores.resume import ResumeBook
from syncd.stores.s3_errors import S3Errors
from syncd.stores.s3_http import (
    S3Http,
    S3HttpError,
    expect_control_answer,
    head_fields,
    refuse_page,
    required_etag,
)
from syncd.stores.s3_source import S3Source
from syncd.stores.s3_upload import GEN_META, S3Staged, Uploads
from syncd.stores.sigv4 import EMPTY_SHA256, Credentials
from syncd.verify import Composite, vouched

Parts = list[dict[str, Any]]  # GetObjectAttributes ObjectParts.Parts, as botocore parses them




# Ask for stored checksums; syncd checks them itself (botocore's validation is never on).
_CHECKSUM_MODE = {"x-amz-checksum-mode": "ENABLED"}
STALE_UPLOAD_S = 24 * 3600.0  # an upload record this old is not resumed: aborted, restarted

class S3Store:
    """A bucket prefix seen as a store; keys are relative to the prefix."""

    caps = Capabilities(conditional_writes=True, verifies_checksums=True)

    def __init__(
        self, s3: S3Config, transfer: TransferConfig, bucket: str, prefix: str, *,
        resume: ResumeBook | None = None, stale_upload_s: float = STALE_UPLOAD_S,
        endpoint: str = DEFAULT_ENDPOINT,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.name = f"s3://{bucket}/{prefix}"
        self._s3 = s3
        # Where, in messages: with several endpoints, "bucket missing" must say on which.
        self.where = (s3.location() if endpoint == DEFAULT_ENDPOINT
                      else f"endpoint {endpoint} ({s3.location()})")
        self._errors = S3Errors(self.name, self.where, bucket, prefix)
        self._transfer = transfer
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._attributes = True  # GetObjectAttributes not refused yet
        self._slots = asyncio.Semaphore(transfer.concurrency)
        self.budget = ByteBudget(int(transfer.upload_buffer))
        self._botocore_requests = 0
        self._http: S3Http | None = None
        self.native: NativeEngine | None = None  # large GETs, where it can serve (native.py)
        self._creds: Any = None
        self._boto_session: Any = None
        self._uploads = Uploads(
            self, transfer, control=self._control, translated=self._translated,
            slots=self._slots, book=resume, stale_upload_s=stale_upload_s)

    async def __aenter__(self) -> S3Store:
        style = self._s3.addressing_style
        self._http = S3Http(
            self._s3.endpoint_url or f"https://s3.{self._s3.region}.amazonaws.com",
            self._s3.region,
            virtual=style == "virtual" or (style == "auto" and self._s3.endpoint_url is None),
            credentials=self._credentials, connections=self._transfer.concurrency + 4,
            connect_timeout_s=self._s3.connect_timeout_s, read_timeout_s=self._s3.read_timeout_s,
            max_attempts=self._s3.max_attempts,
        )
        self._stack.push_async_callback(self._http.close)
        if self._transfer.native:
            self.native = NativeEngine(NativeConfig(
                self._s3.endpoint_url or "https://", self._s3.region,
                connections=max(1, self._transfer.concurrency // NATIVE_SLOTS_PER_SOCKET),
                part_size=NATIVE_PART, memory_limit=NATIVE_MEMORY),
                self._credentials, name=self.name)
        return self

    def _session(self) -> Any:
        """botocore's session, imported on first need: it costs ~0.2 s of start-up, which a
        no-op sync with credentials in the environment never pays."""
        if self._boto_session is None:
            from aiobotocore.session import AioSession

            session = AioSession(profile=self._s3.profile) if self._s3.profile else AioSession()
            if self._s3.access_key_id_env:  # the endpoint's own keys, never another's chain
                named = self._named_credentials()
                session.set_credentials(named.access_key, named.secret_key, named.token)
            self._boto_session = session
        return self._boto_session

    async def _control(self) -> Any:
        """The botocore client for the control plane (multipart create/complete, batch
        delete), created on first use."""
        if self._client is None:
            from aiobotocore.config import AioConfig

            config = AioConfig(
                s3={"addressing_style": self._s3.addressing_style},
                region_name=self._s3.region,
                max_pool_connections=4,
                connect_timeout=self._s3.connect_timeout_s,
                read_timeout=self._s3.read_timeout_s,
                retries={"total_max_attempts": self._s3.max_attempts, "mode": "standard"},
                # The data path goes where the config says; so must the control plane, whatever
                # AWS_ENDPOINT_URL* or a profile's endpoint_url would make botocore pick.
                ignore_configured_endpoint_urls=True,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = await self._stack.enter_async_context(self._session().create_client(
                "s3", endpoint_url=self._s3.endpoint_url, config=config))
            client.meta.events.register("before-send.s3", self._count)
            client.meta.events.register("response-received.s3", expect_control_answer)
            self._client = client
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._stack.aclose()

    def _count(self, **_: Any) -> None:
        self._botocore_requests += 1

    @property
    def requests(self) -> int:
        """Every request sent, for tests and benchmarks."""
        return self._botocore_requests + (self._http.requests if self._http else 0)

    def _named_credentials(self) -> Credentials:
        """The keys in the environment variables the endpoint names; a variable it names
        that is not set is an error naming it, never a silent fall-back to another chain."""
        s3, env = self._s3, os.environ
        assert s3.access_key_id_env and s3.secret_access_key_env
        names = [s3.access_key_id_env, s3.secret_access_key_env]
        if s3.session_token_env:
            names.append(s3.session_token_env)
        missing = [n for n in names if not env.get(n)]
        if missing:
            raise AccessDenied(
                f"no credentials for {self.where}: {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set", store=self.name,
                hint=f"set {' and '.join(names)} in syncd's environment")
        token = env[s3.session_token_env] if s3.session_token_env else None
        return Credentials(env[names[0]], env[names[1]], token)

    async def _credentials(self) -> Credentials:
        """The endpoint's named variables; else environment credentials directly (the
        sidecar case); else botocore's whole chain (profiles, SSO, web identity, instance
        roles), refreshed as it decides."""
        if self._s3.access_key_id_env:
            return self._named_credentials()
        env = os.environ
        if not self._s3.profile and env.get("AWS_ACCESS_KEY_ID") and env.get(
                "AWS_SECRET_ACCESS_KEY"):
            return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                               env.get("AWS_SESSION_TOKEN") or None)
        if self._creds is None:
            self._creds = await self._session().get_credentials()
            if self._creds is None:
                raise NoCredentialsError()
        frozen = await self._creds.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    @property
    def endpoint_url(self) -> str:
        """The configured URL; "" for AWS S3."""
        return self._s3.endpoint_url or ""

    @property
    def http(self) -> S3Http:
        assert self._http is not None, "use the store as an async context manager"
        return self._http

    def object_key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _translated(self, key: str | None = None) -> contextlib.AbstractContextManager[None]:
        return self._errors.translated(key)

    async def check(self) -> None:
        """Fail fast with one clear error: endpoint, credentials, bucket."""
        try:
            with self._translated():
                resp = await self.http.send("HEAD", self.bucket, "", payload_hash=EMPTY_SHA256,
                                            ok=(200,))
                resp.release()
                refuse_page("HeadBucket", resp.status, resp.headers.get("Content-Type"))
        except NotFound:
            raise BucketMissing(f"bucket {self.bucket!r} does not exist at {self.where}",
                                store=self.name) from None

    async def list(self) -> Listing:
        listing = Listing()
        token: str | None = None
        seen: set[str] = set()
        with self._translated():
            while True:
                page, token = await self.http.list_page(self.bucket, self.prefix, token)
                if token in seen:  # a server looping on one page must not look complete
                    raise S3HttpError(200, "IncompleteListing", "continuation token repeated")
                if token:
                    seen.add(token)
                for object_key, size, raw_etag, modified in page:
                    key = relative_key(object_key, self.prefix)
                    # syncd's own lease objects are not data; any other key under .syncd/
                    # is listed, so the plan refuses it with its reason (never deleted)
                    if key and not is_directory_marker(key) and not syncd_object(key):
                        etag = normalize_etag(raw_etag)
                        # only a weak ETag needs the time beside it to name a version
                        when = epoch_s(modified) if weak_etag(etag) else None
                        listing.entries[key] = Entry(key, size, etag=etag, last_modified=when)
                if not token:
                    return listing

    async def get_small(self, key: str) -> tuple[bytes, str] | None:
        """A small object's bytes and ETag (syncd's own records), or None if absent."""
        try:
            with self._translated(key):
                resp = await self.http.send("GET", self.bucket, self.object_key(key),
                                            payload_hash=EMPTY_SHA256, ok=(200,))
                try:
                    etag = await required_etag(resp, "GetObject")
                    body = await resp.read()
                finally:
                    resp.release()
        except BucketMissing:
            raise
        except NotFound:
            return None
        return body, normalize_etag(etag) or ""

    async def put_small(self, key: str, body: bytes, *, if_match: str | None = None,
                        if_none_match: bool = False, fence: Fence | None = None,
                        generation: int = 0) -> str:
        """A conditional PUT of a small record; its new ETag. PreconditionFailed (412) when
        the condition does not hold, Conflict (409) when another write raced it. A
        `generation` is stamped on it as on every object a lease holder publishes."""
        headers: dict[str, str] = {"content-type": "application/json"}
        if generation:
            headers[f"x-amz-meta-{GEN_META}"] = str(generation)
        if if_match is not None:
            headers["if-match"] = f'"{if_match}"'
        if if_none_match:
            headers["if-none-match"] = "*"
        with self._translated(key):
            resp = await self.http.send("PUT", self.bucket, self.object_key(key), body=body,
                                        headers=headers, payload_hash=sha256(body).hexdigest(),
                                        ok=(200,), guard=fence.check if fence else None)
            try:
                etag = await required_etag(resp, "PutObject")
            finally:
                resp.release()
        return normalize_etag(etag) or ""

    async def delete_small(self, key: str) -> None:
        with self._translated(key):
            resp = await self.http.send("DELETE", self.bucket, self.object_key(key),
                                        payload_hash=EMPTY_SHA256, ok=(200, 204))
            resp.release()

    async def head(self, key: str) -> dict[str, Any]:
        with self._translated(key):
            resp = await self.http.send("HEAD", self.bucket, self.object_key(key),
                                        headers=_CHECKSUM_MODE, payload_hash=EMPTY_SHA256)
            resp.release()
        return head_fields(resp.headers)

    async def part(self, key: str, number: int, etag: str | None) -> dict[str, Any]:
        """HEAD ?partNumber=N of a multipart object: the part's own length (`PartLength`),
        the parts count and, where the server keeps them, the part's checksum. `etag` pins
        the version the first HEAD saw."""
        headers = dict(_CHECKSUM_MODE)
        if etag and not weak_etag(etag):
            headers["if-match"] = f'"{etag}"'
        with self._translated(key):
            resp = await self.http.send("HEAD", self.bucket, self.object_key(key),
                                        query=[("partNumber", str(number))], headers=headers,
                                        payload_hash=EMPTY_SHA256)
            resp.release()
        length = resp.headers.get("Content-Length", "")
        return {**head_fields(resp.headers), "PartLength": int(length) if length.isdigit() else 0}

    async def object_parts(self, key: str) -> tuple[str | None, Parts] | None:
        """GetObjectAttributes' ObjectParts: the ETag and each part's size (and checksum,
        where the server keeps them), or None when the server does not tell. A server that
        refuses the call once is not asked again."""
        if not self._attributes:
            return None
        client = await self._control()
        etag: str | None = None
        parts: Parts = []
        marker = 0
        while True:
            try:
                with self._translated(key):
                    page = await client.get_object_attributes(
                        Bucket=self.bucket, Key=self.object_key(key), MaxParts=1000,
                        PartNumberMarker=marker, ObjectAttributes=["ETag", "ObjectParts"])
            except NotFound:
                raise
            except StoreError:  # not implemented, or not allowed by the policy: HEADs do
                self._attributes = False
                return None
            etag = normalize_etag(page.get("ETag"))
            listed = page.get("ObjectParts") or {}
            parts.extend(listed.get("Parts") or [])
            marker = int(listed.get("NextPartNumberMarker") or 0)
            if not listed.get("IsTruncated") or not marker:
                return (etag, parts) if parts else None

    async def checksum(self, entry: Entry, algo: Algo | None = None) -> Checksum | None:
        """A full-object checksum only: a composite one says nothing about a local file's
        bytes without its upload's part boundaries."""
        claim = vouched(await self.head(entry.key))
        return None if isinstance(claim, Composite) else claim

    async def open(self, entry: Entry) -> S3Source:
        source = S3Source(self, entry)
        if entry.size > self._transfer.multipart_threshold:
            await source.vouched()  # one HEAD pins the ETag that every ranged part must match
        return source

    @contextlib.asynccontextmanager
    async def streamed(
        self, key: str, start: int, end: int, etag: str | None, *, ranged: bool,
        since: str | None = None,
    ) -> AsyncIterator[tuple[dict[str, Any], AsyncIterator[bytes]]]:
        """One GET of bytes [start, end) under one of the store's transfer slots: the
        answer's header fields and its body's chunks. `etag` pins the object (If-Match), so
        the parts of one download never mix two versions; an ETag that does not depend on
        the content pins nothing (issue 19), so then `since` (the first HEAD's
        Last-Modified) does, with If-Unmodified-Since. A version that moved is
        SourceChanged. The connection goes back to the pool on exit, whether the body was
        read or not."""
        headers = dict(_CHECKSUM_MODE)
        if etag and not weak_etag(etag):
            headers["if-match"] = f'"{etag}"'
        elif since:
            headers["if-unmodified-since"] = since
        if ranged:
            headers["range"] = f"bytes={start}-{end - 1}"
        async with self._slots:
            try:
                with self._translated(key):
                    resp = await self.http.send("GET", self.bucket, self.object_key(key),
                                                headers=headers, payload_hash=EMPTY_SHA256)
            except PreconditionFailed:
                raise SourceChanged(f"{key} changed while it was read", store=self.name,
                                    key=key) from None
            try:
                async with contextlib.aclosing(self._chunks(resp, key, end - start)) as chunks:
                    yield head_fields(resp.headers), chunks
            finally:
                resp.release()

    async def stream_native(self, key: str, etag: str, sink: Sink) -> None:
        """The whole object through the native engine, under one transfer slot, pinned to
        `etag` (a version that moved is SourceChanged)."""
        assert self.native is not None
        host, path = self.http.target(self.bucket, self.object_key(key))
        async with self._slots:
            try:
                with self._translated(key):
                    await self.native.stream(host, path, etag=etag, key=key, sink=sink)
            except PreconditionFailed:
                raise SourceChanged(f"{key} changed while it was read", store=self.name,
                                    key=key) from None

    async def _chunks(
        self, body: aiohttp.ClientResponse, key: str, expected: int
    ) -> AsyncGenerator[bytes, None]:
        """The body's chunks as aiohttp received them: no slicing, no joining copies."""
        content = body.content
        seen = 0
        while True:
            try:
                chunk, _ = await content.readchunk()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise Interrupted(f"{self.name}{key}: stream broke after {seen} of {expected} "
                                  f"bytes ({type(exc).__name__})", store=self.name,
                                  key=key) from exc
            if not chunk:
                break
            seen += len(chunk)
            if seen > expected:
                raise StoreError(f"{self.name}{key}: server sent more bytes than asked",
                                 store=self.name, key=key)
            yield chunk
        if seen != expected:
            raise Interrupted(f"{self.name}{key}: stream ended after {seen} of {expected} bytes",
                              store=self.name, key=key)
    # --- writing: s3_upload.Uploads ---------------------------------------------------------

    async def stage(self, source: Source, want: frozenset[Algo], generation: int = 0) -> S3Staged:
        """Single PUT: bytes held in memory until publish. Large: parts of an uncompleted MPU."""
        return await self._uploads.stage(source, want, generation)

    async def abort_stale_uploads(self, older_than_s: float) -> int:
        """Abort uploads under the prefix that no run will continue: initiated more than
        `older_than_s` ago and not named by a fresh record in the resume book (a crash
        before its record was written, a file since deleted, a stale record). Returns how
        many were aborted. moto reports every upload as initiated in 2010: there any
        upload without a record counts as old."""
        return await self._uploads.abort_stale_uploads(older_than_s)

    async def publish(self, staged: Staged, fence: Fence) -> Entry:
        return await self._uploads.publish(staged, fence)

    async def flush(self) -> None:
        return None  # a completed PUT is durable

    async def discard(self, staged: Staged) -> None:
        """Callers discard from their exception handler (`sys.exception()` is why): a
        recorded upload that was only interrupted stays for the next run to complete."""
        await self._uploads.discard(staged)

    async def delete(self, keys: Sequence[str], fence: Fence) -> None:
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            fence.check()
            with self._translated():
                resp = await (await self._control()).delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.object_key(k)} for k in batch],
                            "Quiet": True},
                )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"could not delete {len(errors)} object(s), first "
                    f"{first.get('Key')}: {first.get('Code')}", store=self.name,
                )
