"""Moved beside the stores that use it: syncd/stores/resume.py.

Only stores/volume.py and stores/volume_download.py still import this name (their owners are
changing them at the same time); delete this module once they import syncd.stores.resume.
"""

from syncd.stores.resume import (
    PartialDownload,
    fresh_partials,
    is_partial,
    part_records,
    partial_name,
    read_record,
    same_head,
    sidecar_of,
    worth_resuming,
)

__all__ = ["PartialDownload", "fresh_partials", "is_partial", "part_records", "partial_name",
           "read_record", "same_head", "sidecar_of", "worth_resuming"]
