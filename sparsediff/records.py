"""Files long jobs write as they go, so an interrupted run keeps what it finished: whole JSON
lines appended and flushed one by one, and files replaced atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # processes never share a temporary file
    tmp.write_text(text)
    os.replace(tmp, path)


def append_line(path: Path, record: dict) -> None:
    """One whole line per record, flushed to disk before the next item starts."""
    data = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict]:
    """The whole JSON lines of a record; a last line cut off by a crash is dropped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
