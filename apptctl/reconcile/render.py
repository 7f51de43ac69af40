"""The reconciliation report as text for the terminal."""

from collections import Counter

from apptctl.reconcile.report import Report


def render(report: Report, *, limit: int = 50) -> str:
    counts = report.counts
    lines = [
        "requests: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v or k in ("lost", "duplicated")),
        "checked: " + ", ".join(f"{k} {v}" for k, v in report.checked.items()),
    ]
    if report.dead_letters:
        for queue, reasons in sorted(report.dead_letters.items()):
            lines.append(
                f"dead letters in {queue}: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
            )
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.ok:
        lines.append("reconcile: OK (no violation)")
        return "\n".join(lines)
    by_kind = Counter(v.kind.value for v in report.violations)
    lines.append(
        f"reconcile: {len(report.violations)} VIOLATION(S): "
        + ", ".join(f"{k} {n}" for k, n in by_kind.items())
    )
    for v in report.violations[:limit]:
        lines.append(f"  {v.kind.value:<26} {v.tenant_id or '-'} {v.subject}: {v.detail}")
    if len(report.violations) > limit:
        lines.append(f"  ... {len(report.violations) - limit} more (use --json for all)")
    return "\n".join(lines)
