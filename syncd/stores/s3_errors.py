"""What an S3 failure means to syncd: botocore's, the data path's and aiohttp's errors mapped
into the SyncdError tree, each naming the object and the endpoint it happened at."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from syncd.errors import (
    AccessDenied,
    BucketMissing,
    Conflict,
    NotFound,
    NotS3,
    PreconditionFailed,
    StoreError,
    Unreachable,
)
from syncd.stores.s3_http import NotS3Response, S3HttpError, transient

_ACCESS_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "AllAccessDisabled", "AccountProblem", "403",
}


@dataclass(frozen=True, slots=True)
class S3Errors:
    """One store's translation: `name` is the store, `where` the endpoint as messages say it
    (with several endpoints, "bucket missing" must say on which)."""

    name: str
    where: str
    bucket: str
    prefix: str

    def _what(self, key: str | None) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}" if key else self.name

    @contextlib.contextmanager
    def translated(self, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise self.error(str(err.get("Code", "")), status, str(err.get("Message", "")),
                             key) from exc
        except S3HttpError as exc:
            raise self.error(exc.code, exc.status, exc.message, key) from exc
        except NotS3Response as exc:
            raise NotS3(
                f"{self.where} does not answer as S3: {self._what(key)}: {exc.describe()}",
                store=self.name, key=key,
                hint="check endpoint_url and addressing_style: they must name the S3 API, "
                     "not a web page, console or proxy") from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise AccessDenied(
                f"no usable AWS credentials found for {self.where}", store=self.name,
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role",
            ) from exc
        except (ConnectionError, HTTPClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(
                f"cannot reach {self.where}: {type(exc).__name__}", store=self.name, key=key
            ) from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self.name}: {exc}", store=self.name, key=key) from exc

    def error(self, code: str, status: int | None, message: str, key: str | None) -> StoreError:
        what = self._what(key)
        if code == "NoSuchBucket":
            return BucketMissing(f"bucket {self.bucket!r} does not exist at {self.where}",
                                 store=self.name)
        if code in _ACCESS_CODES or status == 403:
            return AccessDenied(
                f"access denied to {what} at {self.where} ({code})", store=self.name, key=key,
                hint="check the credentials and the bucket policy",
            )
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFound(f"{what} does not exist", store=self.name, key=key)
        if code == "ConditionalRequestConflict" or status == 409:
            return Conflict(f"{what}: a concurrent conditional write is in flight",
                            store=self.name, key=key)
        if code in ("PreconditionFailed", "412") or status == 412:
            return PreconditionFailed(f"{what} changed (precondition failed)",
                                      store=self.name, key=key)
        if transient(status, code) or (isinstance(status, int) and status >= 500):
            return Unreachable(f"{what}: server error {code}", store=self.name, key=key)
        return StoreError(f"{what}: {code or status}: {message}".rstrip(": "),
                          store=self.name, key=key)
