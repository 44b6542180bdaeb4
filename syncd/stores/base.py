"""The one small store interface both the S3 bucket and the volume implement.

Data moves as `source = src.open(entry)` -> `staged = dst.stage(source)` -> verify ->
`dst.publish(staged, fence)`. Staging makes nothing visible (a temp file under `.syncd/`, an
uncompleted multipart upload, bytes in memory); `publish` is the single step that does, and it
calls `fence.check()` right before it, so a writer that lost its lease publishes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from syncd.listing import Algo, Checksum, Entry, Listing

CHUNK_BYTES = 1 << 20  # hashing/writing granularity: large enough to amortise per-call cost


@dataclass(frozen=True, slots=True)
class Capabilities:
    conditional_writes: bool = False
    verifies_checksums: bool = False  # the store checks a checksum we send with the bytes
    atomic_rename: bool = False
    local: bool = False  # reading is cheap: hash the bytes rather than ask for a stored checksum


class Fence(Protocol):
    """Proof of a write lease: `check()` raises LeaseLost once it is no longer valid."""

    @property
    def generation(self) -> int: ...

    def check(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OpenFence:
    """The fence of a run that holds no lease (generation 0): never refuses."""

    generation: int = 0

    def check(self) -> None:
        return None


class Source(Protocol):
    """One object being copied: its size and ranged reads, so large ones move as parts."""

    key: str
    size: int

    def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]: ...

    async def vouched(self) -> Checksum | None:
        """The checksum the source vouches for, if it has one (an S3 object learns it from its
        HEAD or, for a single GET, from the response headers once reading has started)."""
        ...

    async def digest(self, algo: Algo) -> Checksum:
        """Hash the whole source (one extra read pass); for metadata needed up front."""
        ...

    async def identity(self) -> Entry:
        """What was actually read (ETag/stat), to record; raises SourceChanged if it moved."""
        ...


@dataclass(slots=True)
class Staged:
    """Bytes held where no reader sees them, with the checksums of exactly those bytes.

    Each store stages into a subclass of its own that says where it holds them (a temp
    file, a multipart upload, bytes in memory); it takes those back through `staged_by`."""

    key: str
    size: int
    checksums: dict[Algo, str]
    source: Source
    metadata: dict[str, str] = field(default_factory=dict)
    resumed: int = 0  # bytes not transferred because an earlier, interrupted run had them
    # a composite claim's algorithm over each of its upload's parts (`verify.mismatch`)
    parts: tuple[str, ...] = ()


def part_boundaries(source: Source) -> list[tuple[int, int]] | None:
    """The ranges of the upload whose per-part checksums the source vouches for (an S3
    multipart object, once `vouched()` was asked), else None: any split will do."""
    boundaries = getattr(source, "boundaries", None)
    return boundaries() if callable(boundaries) else None


# Where the native engine hands a body over, piece by piece in order: (bytes, offset).
Sink = Callable[[memoryview, int], None]
Stream = Callable[[Sink], Awaitable[None]]


def native_stream(source: Source) -> Stream | None:
    """The whole object through the native engine (in order, to a sink called on an engine
    thread), when its store has one and it can serve this object; else None."""
    streamer = getattr(source, "native", None)
    return streamer() if callable(streamer) else None


S = TypeVar("S", bound=Staged)


def staged_by(staged: Staged, kind: type[S], store: str) -> S:
    """`staged` as the store `store` staged it (`kind`): a store publishes or discards only
    what it staged itself; anything else is a programming error, not a store failure."""
    if not isinstance(staged, kind):
        raise TypeError(f"{store}: {staged.key} was staged by another store "
                        f"({type(staged).__name__}, not {kind.__name__})")
    return staged


class Store(Protocol):
    name: str
    caps: Capabilities

    async def list(self) -> Listing: ...

    async def open(self, entry: Entry) -> Source: ...

    async def stage(self, source: Source, want: frozenset[Algo], generation: int = 0) -> Staged:
        """Hold the bytes unseen, hashed with OWN_ALGO plus `want`; a store that keeps
        metadata records the lease `generation` of the writer with them."""
        ...

    async def publish(self, staged: Staged, fence: Fence) -> Entry: ...

    async def discard(self, staged: Staged) -> None: ...

    async def flush(self) -> None:
        """Make everything published so far durable (a store may batch that work)."""
        ...

    async def delete(self, keys: Sequence[str], fence: Fence) -> None: ...

    async def checksum(self, entry: Entry, algo: Algo | None = None) -> Checksum | None:
        """What this store vouches for `entry`: a local store hashes it with `algo`, a remote
        one returns its stored checksum (whatever the algorithm) or None."""
        ...

    async def close(self) -> None: ...
