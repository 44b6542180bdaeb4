"""Fixtures of the end-to-end tests: the real binary against the real test servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import Setup
from tests.servers import S3Server


@pytest.fixture
def setup(s3: S3Server, bucket: str, tmp_path: Path) -> Iterator[Setup]:
    st = Setup(s3, bucket, tmp_path)
    yield st
    for d in st.daemons:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
