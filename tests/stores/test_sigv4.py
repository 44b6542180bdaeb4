"""syncd's SigV4 signer agrees with botocore's for any key, query, header and credentials."""

from __future__ import annotations

from datetime import UTC, datetime

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.stores.sigv4 import (
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    Credentials,
    Signer,
    canonical_query,
    encode_path,
)

keys = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
               min_size=1, max_size=40)
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


def botocore_signature(method: str, url: str, headers: dict[str, str], payload: str,
                       creds: Credentials, now: datetime) -> str:
    request = AWSRequest(method=method, url=url, headers={**headers,
                                                          "x-amz-content-sha256": payload})
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    request.context["timestamp"] = amz_date
    request.headers["X-Amz-Date"] = amz_date
    if creds.token:
        request.headers["X-Amz-Security-Token"] = creds.token
    auth = S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), "s3",
                       "eu-west-3")
    canonical = auth.canonical_request(request)
    return str(auth.signature(auth.string_to_sign(request, canonical), request))


@settings(max_examples=150, deadline=None)
@given(key=keys, query=st.lists(st.tuples(values.filter(bool), values), max_size=3),
       meta=values, token=st.none() | values.filter(bool),
       payload=st.sampled_from([UNSIGNED_PAYLOAD, EMPTY_SHA256]),
       method=st.sampled_from(["GET", "HEAD", "PUT"]))
def test_sigv4_signature_matches_botocore(key, query, meta, token, payload, method):
    creds = Credentials("AKIAEXAMPLE", "secret/with+chars", token)
    now = datetime(2026, 11, 23, 6, 30, 5, tzinfo=UTC)
    path = encode_path(f"/bucket/{key}")
    query = dict(query).items()  # botocore keeps one value per name
    url = f"http://127.0.0.1:9000{path}"
    if query:
        url += "?" + canonical_query(query)
    headers = {"x-amz-meta-syncd-note": meta, "range": "bytes=0-9"}
    ours = Signer("eu-west-3").sign(method, "127.0.0.1:9000", path, query, headers, payload,
                                    creds, now)
    expected = botocore_signature(method, url, headers, payload, creds, now)
    assert ours["authorization"].endswith(f"Signature={expected}")
    assert ours["x-amz-content-sha256"] == payload


def test_sigv4_signer_caches_one_derived_key_per_day():
    signer = Signer("us-east-1")
    creds = Credentials("AK", "SK")
    for day in (1, 1, 2):
        signer.sign("GET", "h", "/b/k", (), {}, EMPTY_SHA256, creds,
                    datetime(2026, 11, day, tzinfo=UTC))
    assert len(signer._keys) == 1


def test_sigv4_encode_path_keeps_slashes_and_unreserved_only():
    assert encode_path("/b/a b/ü+=~._-") == "/b/a%20b/%C3%BC%2B%3D~._-"
