"""The fault suite's last numbers as a Markdown table, written into docs/reliability.md between the
`faults:begin` / `faults:end` markers: `python -m tests.faults.report` (or `make faults-report`)."""

import json
import sys

from tests.faults.harness import REPORT_DIR, ROOT

DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
ORDER = (
    "kill_9",
    "broker_cuts",
    "db_terminations",
    "duplicates",
    "reordered",
    "poison",
    "crash_points",
    "least_privilege",
    "broker_restart",
    "postgres_restart",
)


def _faults(faults: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in faults.items()) or "-"


def table(runs: list[dict]) -> str:
    lines = [
        "| scenario | requests | published | faults | lost | dup | unexpected | dead-lettered "
        "| outcomes | violations (known) | read store back | duration s | result | run |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|---:|---|---|",
    ]
    for r in runs:
        outcomes = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())
        if r.get("office"):
            outcomes += "; office records: " + ", ".join(f"{k} {v}" for k, v in r["office"].items())
        dead = f"{r['dead_lettered']}" + (f" (+{r['poison']} poison)" if r.get("poison") else "")
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['published']} | {_faults(r['faults'])} | {r['lost']} "
            f"| {r['duplicated']} | {r['unexpected']} | {dead} | {outcomes} "
            f"| {r['violations']} ({r.get('known_defects', 0)}) | {r['read_store_regressions']} "
            f"| {r['duration_s']} | **{r['result']}** | {r['finished_at']}, x{r['scale']:g} |"
        )
    return "\n".join(lines)


def main() -> None:
    runs = [json.loads(p.read_text()) for p in REPORT_DIR.glob("*.json")]
    runs.sort(key=lambda r: ORDER.index(r["scenario"]) if r["scenario"] in ORDER else len(ORDER))
    rendered = table(runs)
    if not DOC.exists() or BEGIN not in DOC.read_text():
        print(rendered)
        return
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{rendered}\n{END}{tail}")
    print(f"wrote {len(runs)} scenario(s) into {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
