"""Benchmark harness: syncd against s5cmd and rclone on the same data, same server, same run.

Run it with ``python -m bench [--quick] [options]``; see ``bench/README.md``.
"""
