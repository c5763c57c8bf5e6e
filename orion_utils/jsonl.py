"""JSONL storage of records: atomic whole-file writes, crash-safe appends, validating reads."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Type, TypeVar, Union

T = TypeVar("T")


class RecordError(ValueError):
    """A JSONL file holds a row that does not match its record type."""


def to_dict(record: Any) -> dict:
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)


def _atomic_write(path: Union[str, Path], write) -> Path:
    """Write through ``write(file)`` to a temp file, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: Union[str, Path], records: Iterable[Any]) -> Path:
    """Write all records at once, atomically."""
    def write(f):
        for record in records:
            f.write(json.dumps(to_dict(record), ensure_ascii=False) + "\n")

    return _atomic_write(path, write)


def write_json(path: Union[str, Path], obj: Any) -> Path:
    """Atomic JSON write (configs, manifests, metrics)."""
    def write(f):
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")

    return _atomic_write(path, write)


class JsonlAppender:
    """Append-only JSONL writer that flushes every record, so a crash loses at most the one in flight.

    A torn last line (from a kill mid-write) is dropped by ``read_jsonl(..., tolerate_torn_tail=True)``.
    """

    def __init__(self, path: Union[str, Path], fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._repair_torn_tail()
        self._file = open(self.path, "a", encoding="utf-8")

    def _repair_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def append(self, record: Any) -> None:
        self._file.write(json.dumps(to_dict(record), ensure_ascii=False) + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def matches_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field's type hint (records here, profile sections in ``config``)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(matches_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def from_dict(cls: Type[T], row: dict, where: str = "") -> T:
    """Build a record from a dict, checking field names and types; errors say where and which field."""
    prefix = f"{where}: " if where else ""
    if not isinstance(row, dict):
        raise RecordError(f"{prefix}expected a JSON object for {cls.__name__}, got {type(row).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(row) - set(fields))
    if unknown:
        raise RecordError(f"{prefix}unknown field {unknown[0]!r} for {cls.__name__}")
    for name, f in fields.items():
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if name not in row:
            if has_default:
                continue
            raise RecordError(f"{prefix}missing field {name!r} for {cls.__name__}")
        if not matches_type(row[name], hints[name]):
            raise RecordError(
                f"{prefix}field {name!r} of {cls.__name__} should be {hints[name]}, "
                f"got {type(row[name]).__name__} {str(row[name])[:60]!r}"
            )
    return cls(**row)


def iter_jsonl(path: Union[str, Path], cls: Optional[Type[T]] = None, tolerate_torn_tail: bool = False) -> Iterator[Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (has the stage that writes it run?)")
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if tolerate_torn_tail and lineno == len(lines) and not line.endswith("\n"):
                return
            raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        yield from_dict(cls, row, where=f"{path}:{lineno}") if cls is not None else row


def read_jsonl(path: Union[str, Path], cls: Optional[Type[T]] = None, tolerate_torn_tail: bool = False) -> list:
    """Read and validate every row; a bad row raises RecordError naming file, line and field."""
    return list(iter_jsonl(path, cls, tolerate_torn_tail=tolerate_torn_tail))
