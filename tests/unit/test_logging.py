"""Log lines from several processes on one pipe never mix: one write per line, each within PIPE_BUF."""

import json
import os
import subprocess
import sys
import threading

from workers.runtime.logging import MAX_LINE_BYTES, render_line

WRITER = """
import sys, structlog
from workers.runtime.logging import configure_logging
configure_logging("INFO", worker=sys.argv[1])
log = structlog.get_logger()
for i in range(int(sys.argv[2])):
    log.info("test.line", n=i, padding=sys.argv[1] * int(sys.argv[3]))
try:
    raise RuntimeError("boom " + "x" * 20000)
except RuntimeError:
    log.exception("test.failed")
"""


def test_a_line_longer_than_pipe_buf_is_shortened_and_says_so() -> None:
    line = render_line(None, "error", {"event": "worker.crashed", "exception": "Traceback\n" * 5000, "n": 1})
    assert len(line.encode()) + 1 <= MAX_LINE_BYTES
    parsed = json.loads(line)
    assert parsed["event"] == "worker.crashed" and parsed["n"] == 1 and parsed["truncated"] is True
    assert parsed["exception"].startswith("Traceback\n") and parsed["exception"].endswith("[truncated]")


def test_a_short_line_is_left_alone() -> None:
    assert json.loads(render_line(None, "info", {"event": "x", "a": "é"})) == {"event": "x", "a": "é"}


def test_four_processes_writing_long_lines_to_one_pipe_never_mix_them() -> None:
    read_end, write_end = os.pipe()
    lines_each, width = 200, 3000
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, name, str(lines_each), str(width)],
            stdout=write_end,
            env=os.environ,
        )
        for name in ("a", "b", "c", "d")
    ]
    os.close(write_end)
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    reader.join(timeout=60)
    os.close(read_end)

    lines = b"".join(chunks).decode().splitlines()
    parsed = [json.loads(line) for line in lines]  # a mixed line would not parse
    assert len(parsed) == 4 * (lines_each + 1)
    for name in "abcd":
        mine = [p for p in parsed if p["worker"] == name]
        assert [p["n"] for p in mine if p["event"] == "test.line"] == list(range(lines_each))
        assert all(p["padding"] == name * width for p in mine if p["event"] == "test.line")
        failed = [p for p in mine if p["event"] == "test.failed"]
        assert (
            len(failed) == 1 and failed[0]["truncated"] is True and "RuntimeError" in failed[0]["exception"]
        )
