"""What `syncd lease status` says about one lease: a row (printed as JSON with `--json`)
and its line. Pure: the view is read by the caller, the time is an argument."""

from __future__ import annotations

from typing import Any

from syncd.lease.record import Timing, View


def row(name: str, backend: str, mirrors: list[str], view: View, now: float,
        timing: Timing) -> dict[str, Any]:
    """One target's lease as `lease status` reports it. A one-shot read cannot observe
    silence (takeover needs `takeover_after_s` of it, watched by a standby's own clock), so
    the ages are the record's wall-clock times against ours: for operators only. A holder not
    renewed for its TTL by that measure is "silent", never "held" with a negative expiry."""
    out: dict[str, Any] = {"target": name, "backend": backend, "mirrors": mirrors,
                           "gen": view.gen, "state": "free", "holder": None}
    record = view.record
    if view.corrupt is not None:
        out.update(state="corrupt", detail=view.corrupt)
    elif record is not None:
        age = now - record.renewed_wall
        out.update(
            state="released" if record.released else "held" if age < record.ttl_s
            else "silent",
            holder={"id": record.holder.id, "host": record.holder.host,
                    "pid": record.holder.pid},
            acquired_age_s=round(max(0.0, now - record.acquired_wall), 1),
            renewed_age_s=round(max(0.0, age), 1),
            ttl_s=record.ttl_s,
            takeover_after_s=timing.takeover_after(record.ttl_s),
            beat=record.beat,  # changes with every renewal: two reads tell a live holder
        )
        if out["state"] == "held":
            out["expires_in_s"] = round(record.ttl_s - max(0.0, age), 1)
        if age < -1.0:  # its clock is ahead of ours: ages are not what they seem
            out["clock_ahead_s"] = round(-age, 1)
    return out


def line(row: dict[str, Any]) -> str:
    """One `row` as the line `syncd lease status` prints."""
    via = f" via {row['arbiter']}" if row.get("arbiter") else ""
    head = f"{row['target']} [{row['backend']} lease{via}; {', '.join(row['mirrors'])}]"
    if row["state"] == "corrupt":
        return f"{head}: unreadable record, treated as held ({row['detail']})"
    if row["holder"] is None:
        return f"{head}: free" + (f" (last generation {row['gen']})" if row["gen"] else "")
    h = row["holder"]
    who = f"{h['id']} (host {h['host']}, pid {h['pid']})"
    if row["state"] == "released":
        return f"{head}: released by {who}, generation {row['gen']}"
    ahead = (f"; its wall clock is {row['clock_ahead_s']:.0f}s ahead of ours"
             if "clock_ahead_s" in row else "")
    standby = (f"a standby takes over only after it has itself seen no renewal for "
               f"{row['takeover_after_s']:.0f}s")
    if row["state"] == "silent":
        return (f"{head}: silent: not renewed for {row['renewed_age_s']:.0f}s by its wall "
                f"clock (ttl {row['ttl_s']:g}s{ahead}), last held by {who}, generation "
                f"{row['gen']}, heartbeat {row['beat']} (if it changes between two looks, "
                f"the holder is alive and its clock behind ours); {standby}")
    return (f"{head}: held by {who}, generation {row['gen']}, acquired "
            f"{row['acquired_age_s']:.0f}s ago, renewed {row['renewed_age_s']:.0f}s ago, "
            f"expires in {row['expires_in_s']:.0f}s unless renewed (by its wall clock"
            f"{ahead}; {standby})")
