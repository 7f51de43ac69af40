"""`apptctl audit`: an appointment's story in order: who asked for what, the answer and why, what changed."""

import dataclasses
import json

from apptctl.readstore import AuditLine


def _when(moment) -> str:
    return moment.strftime("%a %d %b %H:%M") if moment else "-"


def describe(line: AuditLine) -> str:
    """One line a person reads: time, who, what, and why."""
    head = f"{line.occurred_at:%Y-%m-%d %H:%M:%S} {line.entry:<17} by {line.actor:<14}"
    match line.entry:
        case "requested":
            what = f"asks to {line.action}" + (
                f" to {_when(line.window_start)}"
                if line.window_start
                else f" ({line.reason_text or 'no reason'})"
            )
        case "rejected" | "awaiting_approval" | "failed":
            what = f"[{line.reason_code}] {line.reason_text}"
        case "rescheduled":
            what = (
                f"moved {_when(line.previous_window_start)} -> {_when(line.window_start)} (v{line.version})"
            )
        case "canceled":
            what = f"canceled (v{line.version})" + (f": {line.reason_text}" if line.reason_text else "")
        case _:
            what = f"{line.status} at {_when(line.window_start)} (v{line.version})"
    why = ""
    if line.rule:
        why = f"  rule {line.rule}" + (
            f", setting {line.setting} ({line.setting_level})" if line.setting else ""
        )
    request = f"  request {line.request_id}" if line.request_id else ""
    return f"{head} {what}{why}{request}"


def as_json(lines: list[AuditLine]) -> str:
    return json.dumps([dataclasses.asdict(line) for line in lines], default=str, indent=2)
