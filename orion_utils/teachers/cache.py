"""Crash-safe on-disk cache of teacher replies (SQLite, WAL mode).

Teacher tokens cost money and hours, so: a request whose reply is in the cache is never sent
again, and a ``kill -9`` at any moment loses only the requests in flight.

- One row per key in ``responses``; the key is the sha256 of a canonical JSON of everything that
  determines the reply: model, messages, sampling parameters, extra body, sample index (not the
  server address, so a cache survives a change of endpoint or port). Each reply is committed in
  a transaction as soon as it arrives (replies that arrive together share one: a group commit);
  the first reply stored for a key is kept.
- ``failures`` records requests that failed after their last retry (reason, attempts, last error).
  It never blocks a request: the next run sends it again, and a success deletes the row.
- Each reply records the model the server says served it (``served_model``: the reply's ``model``
  field), beside the model asked for (``model``).
- Nothing secret is stored: no API key, no headers; callers redact reply texts and errors.
- Safe for the asyncio tasks of one process (all writes go through one lock-protected connection)
  and for several processes (SQLite locking, a busy timeout).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

SCHEMA_VERSION = 1
CACHE_FILENAME = "teacher_cache.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    problem_id TEXT NOT NULL DEFAULT '',
    sample_index INTEGER NOT NULL DEFAULT 0,
    request TEXT NOT NULL,
    thinking TEXT NOT NULL,
    solution TEXT NOT NULL,
    usage TEXT NOT NULL,
    finish_reason TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 1,
    latency_s REAL,
    created_at REAL NOT NULL,
    served_model TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    problem_id TEXT NOT NULL DEFAULT '',
    sample_index INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    runs INTEGER NOT NULL DEFAULT 1,
    first_failed_at REAL NOT NULL,
    last_failed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS info (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_key(request: dict, sample_index: int, seed: Optional[int] = None) -> str:
    """sha256 of the canonical request (model, messages, sampling parameters, extra body) + sample index;
    ``seed``: a run's seed, for fresh samples per seed (``teacher.samples_per_seed``); None leaves it out,
    so every seed and student of a run that sends the same request finds the same reply."""
    keyed: dict = {"v": SCHEMA_VERSION, "request": request, "sample_index": sample_index}
    if seed is not None:
        keyed["seed"] = int(seed)
    return hashlib.sha256(canonical_json(keyed).encode()).hexdigest()


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A cache written before ``served_model`` was recorded gets the column (empty: not recorded)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
    if "served_model" not in columns:
        conn.execute("ALTER TABLE responses ADD COLUMN served_model TEXT NOT NULL DEFAULT ''")



def _when_unlocked(step, timeout_s: float):
    """``step()``, tried again while SQLite answers "database is locked" at once (as it may to a journal-mode
    switch racing another connection's), for at most ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)

class TeacherCache:
    """SQLite store of teacher replies keyed by ``request_key``.

    ``path`` is a directory (the database is ``teacher_cache.sqlite`` inside it), a ``.sqlite``/
    ``.db`` file, or ``None`` for an in-memory cache that only deduplicates within the process.
    """

    def __init__(self, path: Union[str, Path, None], synchronous: str = "FULL", busy_timeout_s: float = 60.0):
        if path is None:
            self.path: Optional[Path] = None
            target = ":memory:"
        else:
            p = Path(path)
            if p.suffix not in (".sqlite", ".db", ".sqlite3"):
                p = p / CACHE_FILENAME
            p.parent.mkdir(parents=True, exist_ok=True)
            self.path = p
            target = str(p)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF/NORMAL/FULL/EXTRA, got {synchronous!r}")
        self._lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per write.
        self._conn = sqlite3.connect(
            target, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if self.path is not None:
            # two processes (seeds run at once) opening a new cache together: the one that does not switch it to
            # WAL first may be told "database is locked" at once, without the busy timeout; it tries again
            mode = _when_unlocked(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0], busy_timeout_s)
            if str(mode).lower() != "wal":  # e.g. a filesystem without shared memory
                self._conn.execute("PRAGMA journal_mode = DELETE")
        self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    self._conn.execute(statement)
                _add_missing_columns(self._conn)
                self._conn.execute(
                    "INSERT OR IGNORE INTO info (k, v) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                version = self._conn.execute("SELECT v FROM info WHERE k = 'schema_version'").fetchone()[0]
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        if version != str(SCHEMA_VERSION):
            self._conn.close()
            raise RuntimeError(
                f"teacher cache {self.path} has schema version {version}, this code reads version "
                f"{SCHEMA_VERSION}; use another cache_dir"
            )

    # -- reads -------------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """Cached replies for those keys that have one: key -> row dict (usage/meta decoded)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                cur = self._conn.execute(
                    "SELECT key, thinking, solution, usage, finish_reason, meta, attempts, served_model FROM "
                    f"responses WHERE key IN ({marks})",
                    chunk,
                )
                for key, thinking, solution, usage, finish_reason, meta, attempts, served in cur:
                    out[key] = {
                        "thinking": thinking,
                        "solution": solution,
                        "usage": json.loads(usage),
                        "finish_reason": finish_reason,
                        "meta": json.loads(meta),
                        "attempts": attempts,
                        "served_model": served,
                    }
        return out

    def get(self, key: str) -> Optional[dict]:
        return self.get_many([key]).get(key)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def paid_usage(self) -> list[tuple[str, dict]]:
        """(kind, usage) of every stored reply: each was paid for once (what a run's teacher cost)."""
        with self._lock:
            return [(kind, json.loads(usage)) for kind, usage in
                    self._conn.execute("SELECT kind, usage FROM responses ORDER BY created_at")]

    def failures(self) -> list[dict]:
        with self._lock:
            cur = self._conn.execute(
                "SELECT key, model, kind, problem_id, sample_index, reason, attempts, last_error, runs, "
                "first_failed_at, last_failed_at FROM failures ORDER BY last_failed_at"
            )
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur]

    def integrity_check(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]

    # -- writes (one transaction each) ---------------------------------------------------------

    def put_success(
        self,
        key: str,
        *,
        model: str,
        request: dict,
        thinking: str,
        solution: str,
        usage: dict,
        finish_reason: Optional[str],
        kind: str = "",
        problem_id: str = "",
        sample_index: int = 0,
        meta: Optional[dict] = None,
        attempts: int = 1,
        latency_s: Optional[float] = None,
        served_model: str = "",
    ) -> bool:
        """Store a reply and clear its failure record; True if stored, False if the key already had one.
        ``served_model``: the model the server says served it (the reply's ``model`` field)."""
        return self.put_successes(
            [
                dict(
                    key=key,
                    model=model,
                    request=request,
                    thinking=thinking,
                    solution=solution,
                    usage=usage,
                    finish_reason=finish_reason,
                    kind=kind,
                    problem_id=problem_id,
                    sample_index=sample_index,
                    meta=meta,
                    attempts=attempts,
                    latency_s=latency_s,
                    served_model=served_model,
                )
            ]
        )[0]

    def put_successes(self, rows: Sequence[dict]) -> list[bool]:
        """Store several replies in ONE transaction (one fsync: a group commit); each row has the
        keyword arguments of ``put_success``. Returns, per row, whether it was stored."""
        now = time.time()
        stored: list[bool] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    cur = self._conn.execute(
                        "INSERT INTO responses (key, model, kind, problem_id, sample_index, request, "
                        "thinking, "
                        "solution, usage, finish_reason, meta, attempts, latency_s, created_at, served_model) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
                        (
                            r["key"],
                            r["model"],
                            r.get("kind", ""),
                            r.get("problem_id", ""),
                            int(r.get("sample_index", 0)),
                            canonical_json(r["request"]),
                            r["thinking"],
                            r["solution"],
                            canonical_json(r["usage"]),
                            r.get("finish_reason"),
                            canonical_json(r.get("meta") or {}),
                            int(r.get("attempts", 1)),
                            r.get("latency_s"),
                            now,
                            str(r.get("served_model") or ""),
                        ),
                    )
                    stored.append(cur.rowcount == 1)
                    self._conn.execute("DELETE FROM failures WHERE key = ?", (r["key"],))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return stored

    def put_failure(
        self,
        key: str,
        *,
        model: str,
        reason: str,
        attempts: int,
        last_error: str = "",
        kind: str = "",
        problem_id: str = "",
        sample_index: int = 0,
    ) -> None:
        """Record a request that failed after its last retry (it is sent again on the next run)."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO failures (key, model, kind, problem_id, sample_index, reason, attempts, "
                    "last_error, runs, first_failed_at, last_failed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET reason = excluded.reason, "
                    "attempts = attempts + excluded.attempts, last_error = excluded.last_error, "
                    "runs = runs + 1, last_failed_at = excluded.last_failed_at",
                    (
                        key,
                        model,
                        kind,
                        problem_id,
                        int(sample_index),
                        reason,
                        int(attempts),
                        last_error[:2000],
                        now,
                        now,
                    ),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "TeacherCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TeacherCache({str(self.path) if self.path else ':memory:'!r})"
