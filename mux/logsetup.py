"""Logging of the long-running commands (`xenmux serve`, and any other daemon-like one).

On a terminal or into a file each line carries its own time. When stderr is the journal
(systemd sets `$JOURNAL_STREAM` to the device and inode of the stream it connected), the
journal keeps the time itself, so lines carry none of ours; instead each line starts with
its syslog priority, `<N>`, as sd-daemon(3) describes, so that `journalctl -p warning`
selects by severity. A multi-line record (a traceback) has the prefix on every line: the
journal takes each line of the stream as an entry of its own.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
TIME_FIELD = "%(asctime)s "  # what the journal's lines go without

# sd-daemon(3): SD_ERR 3, SD_WARNING 4, SD_NOTICE 5, SD_INFO 6, SD_DEBUG 7.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7

LEVELS = ("debug", "info", "warning", "error")


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (a custom level takes the next one below)."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return DEBUG_PRIORITY


def stream_is_journal(stream: TextIO, environ: os._Environ | dict | None = None) -> bool:
    """Whether `stream` is the journal's: `$JOURNAL_STREAM` is "DEV:INODE" of its fd.

    Compared to the stream itself, not just present: a child of a unit inherits the
    variable with its stderr redirected elsewhere (a file, a pipe), which is no journal."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """`<N>` before every line of the record, no time of our own."""

    def __init__(self, fmt: str = PLAIN_FORMAT) -> None:
        super().__init__(fmt.replace(TIME_FIELD, ""))

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup_logging(
    level: str | int = "info", stream: TextIO | None = None, *, fmt: str = PLAIN_FORMAT
) -> logging.Handler:
    """Send every log record of at least `level` (a name of LEVELS, or a number) to
    `stream` (default stderr) in the format `fmt`; when the stream is the journal's, with
    the priority first and without `%(asctime)s `. Replaces any handler set before; returns
    the one it installed."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream):
        handler.setFormatter(JournalFormatter(fmt))
    else:
        handler.setFormatter(logging.Formatter(fmt))
    numeric = level if isinstance(level, int) else logging.getLevelName(level.upper())
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    return handler
