"""structlog set-up: one JSON object per line, with message and correlation ids bound per delivery.

Several processes often share one terminal or pipe (`apptctl run`, compose logs). Each line therefore
goes out in a single write of the whole line, newline included, and a line is kept within PIPE_BUF
(4096 bytes), the size up to which the kernel never mixes two writers' bytes on a pipe: a longer line
(a long traceback) has its longest text fields shortened and says `"truncated": true`.
"""

import io
import json
import logging
import os
import sys
import threading
from typing import Any, TextIO

import structlog

MAX_LINE_BYTES = 4096  # PIPE_BUF on Linux: writes up to this size are atomic on a pipe
_MARK = "…[truncated]"


def _fallback(value: Any) -> Any:
    return repr(value)


def render_line(_logger: Any, _method: str, event_dict: dict[str, Any]) -> str:
    """JSON, at most MAX_LINE_BYTES with its newline, shortening the longest strings when too long."""
    line = json.dumps(event_dict, default=_fallback)
    excess = len(line.encode()) + 1 - MAX_LINE_BYTES
    if excess <= 0:
        return line
    fields = dict(event_dict, truncated=True)
    for _ in range(len(fields)):
        longest = max(
            (k for k, v in fields.items() if isinstance(v, str)), key=lambda k: len(fields[k]), default=None
        )
        if longest is None:
            break
        text = fields[longest]
        encoded = len(json.dumps(text).encode())  # escapes make a character cost more than one byte
        target = max(encoded - excess - len(json.dumps(_MARK)) - 64, 0)
        fields[longest] = text[: len(text) * target // encoded] + _MARK
        line = json.dumps(fields, default=_fallback)
        excess = len(line.encode()) + 1 - MAX_LINE_BYTES
        if excess <= 0:
            return line
    return json.dumps({"event": str(event_dict.get("event"))[:200], "truncated": True})


class LineWriter:
    """Writes whole lines to a stream: one os.write per line where the stream has a file descriptor."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None  # an in-memory stream (tests): one write() call per line

    def write_line(self, line: str) -> None:
        data = line + "\n"
        with self._lock:
            if self._fd is None:
                self._stream.write(data)
                self._stream.flush()
                return
            self._stream.flush()  # whatever print() left in the buffer goes first, in order
            view = memoryview(data.encode("utf-8", "backslashreplace"))
            while view:  # one call for any line within MAX_LINE_BYTES; a loop only on a short write
                view = view[os.write(self._fd, view) :]


class LineLogger:
    """A structlog logger that hands each rendered line to a LineWriter."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


class LineHandler(logging.Handler):
    """The standard library's records (aio-pika, alembic, ...) as JSON lines through the same writer."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {"event": record.getMessage(), "logger": record.name, "level": record.levelname.lower()}
            if record.exc_info:
                fields["exception"] = logging.Formatter().formatException(record.exc_info)
            self._writer.write_line(render_line(None, record.levelname, fields))
        except Exception:
            self.handleError(record)


def configure_logging(level: str = "INFO", worker: str | None = None) -> None:
    writer = LineWriter(sys.stdout)
    logging.basicConfig(level=level.upper(), handlers=[LineHandler(writer)], force=True)
    # aio-pika logs every reconnect attempt at length; our own events say what matters.
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            render_line,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *_: LineLogger(writer),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    if worker:
        structlog.contextvars.bind_contextvars(worker=worker)
