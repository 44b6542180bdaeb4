"""syncd: verified, atomic, lease-fenced mirroring between S3 buckets and network volumes."""

__version__ = "0.1.0"
