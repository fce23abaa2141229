"""The score store: one SQLite file (WAL mode) holding scores and runs (and the leaderboard's table,
whose schema and rows belong to :mod:`aligncore.leaderboard`).

Scores are keyed by (image content sha256, branch fingerprint), so a re-run, a
re-fusion or a resumed run scores only what is missing, whatever the file is called.
Several processes may write at once: every write is a short transaction and waits on
a busy timeout instead of failing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import AlignCoreError

STORE_ENV = "ALIGNCORE_STORE"
HOME_ENV = "ALIGNCORE_HOME"

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    sha256      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    branch      TEXT NOT NULL,
    score       REAL,
    explanation TEXT,
    error       TEXT,
    created     REAL NOT NULL,
    PRIMARY KEY (sha256, fingerprint)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id   TEXT PRIMARY KEY,
    created  REAL NOT NULL,
    kind     TEXT NOT NULL,
    out_dir  TEXT,
    config   TEXT NOT NULL,
    summary  TEXT
);
"""


def default_store_path() -> Path:
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    home = Path(os.environ.get(HOME_ENV, Path.home() / ".aligncore")).expanduser()
    return home / "store.sqlite"


class ScoreStore:
    def __init__(self, path: str | Path | None = None, timeout: float = 60.0):
        self.path = Path(path).expanduser() if path else default_store_path()
        check_store_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._setup(timeout)
        except (sqlite3.Error, OSError) as exc:
            raise AlignCoreError(
                f"cannot open the score store {self.path}: {exc}. Check that its folder is writable and has space, "
                f"or choose another with --store or {STORE_ENV}."
            ) from None

    def _setup(self, timeout: float) -> None:
        """WAL mode and the schema. Switching a brand-new file to WAL answers "locked" at once (no busy
        handler) while another process (e.g. another rank) does the same, so that step is retried."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self.ensure_schema(SCHEMA)
                return
            except (sqlite3.OperationalError, AlignCoreError) as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ScoreStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; a failed write (full disk, read-only file) is an AlignCoreError."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # SQLite already rolled back (e.g. after SQLITE_FULL)
                raise
            else:
                self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise AlignCoreError(
                f"cannot write to the score store {self.path}: {exc}. Free disk space or make it writable "
                f"(or choose another with --store or {STORE_ENV}); everything written before is kept, and "
                "a re-run scores only what is missing."
            ) from None

    @contextmanager
    def reading(self, what: str) -> Iterator[None]:
        """A read whose SQLite error (a table of another schema, a damaged file) names the store."""
        try:
            yield
        except sqlite3.Error as exc:
            raise AlignCoreError(f"cannot read {what} from the score store {self.path}: {exc}. It was not written by "
                                 f"this version of aligncore, or is damaged; choose another with --store or "
                                 f"{STORE_ENV}.") from None

    # ------------------------------------------------------------------ scores
    def known(self, fingerprint: str, hashes: Iterable[str]) -> set[str]:
        """The subset of ``hashes`` that already have a score (or a recorded error) for ``fingerprint``."""
        hs = list(dict.fromkeys(hashes))
        found: set[str] = set()
        with self.reading("scores"):
            for i in range(0, len(hs), 900):
                chunk = hs[i : i + 900]
                q = f"SELECT sha256 FROM scores WHERE fingerprint = ? AND sha256 IN ({','.join('?' * len(chunk))})"
                found.update(r[0] for r in self.conn.execute(q, [fingerprint, *chunk]))
        return found

    def put_scores(self, fingerprint: str, branch: str, rows: Iterable[tuple]) -> int:
        """Insert ``(sha256, score, explanation, error)`` rows; an existing key is kept (first writer wins)."""
        now = time.time()
        data = [(r[0], fingerprint, branch, r[1], r[2] if len(r) > 2 else None, r[3] if len(r) > 3 else None, now) for r in rows]
        with self.transaction() as c:
            cur = c.executemany(
                "INSERT OR IGNORE INTO scores (sha256, fingerprint, branch, score, explanation, error, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                data,
            )
        return cur.rowcount

    def get_scores(self, fingerprint: str, hashes: Iterable[str]) -> dict[str, tuple[float | None, str | None, str | None]]:
        hs = list(dict.fromkeys(hashes))
        out: dict[str, tuple] = {}
        with self.reading("scores"):
            for i in range(0, len(hs), 900):
                chunk = hs[i : i + 900]
                q = (
                    "SELECT sha256, score, explanation, error FROM scores WHERE fingerprint = ? "
                    f"AND sha256 IN ({','.join('?' * len(chunk))})"
                )
                for sha, score, expl, err in self.conn.execute(q, [fingerprint, *chunk]):
                    out[sha] = (score, expl, err)
        return out

    def count(self, fingerprint: str | None = None) -> int:
        with self.reading("scores"):
            if fingerprint is None:
                return self.conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
            return self.conn.execute("SELECT COUNT(*) FROM scores WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]

    # ------------------------------------------------------------------ runs
    def add_run(self, run_id: str, kind: str, out_dir: str | None, config: dict, summary: dict | None = None) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO runs (run_id, created, kind, out_dir, config, summary) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, time.time(), kind, out_dir, json.dumps(config, sort_keys=True, default=str),
                 json.dumps(summary or {}, sort_keys=True, default=str)),
            )

    # ------------------------------------------------------------------ tables of other modules
    def ensure_schema(self, script: str) -> None:
        """Run ``CREATE ... IF NOT EXISTS`` statements in one transaction (the leaderboard keeps its own table)."""
        with self.transaction() as c:
            for stmt in _statements(script):
                c.execute(stmt)

    def has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def check_store_path(path: Path) -> None:
    """A store is a regular file, or a new file in a writable folder: never a device (``/dev/null``,
    ``/dev/full``), a FIFO or a folder, beside which SQLite would create its journal files."""
    import stat

    from .files import kind_of

    how = f"Choose a file with --store or {STORE_ENV}."
    for p in (path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal"))):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if os.path.islink(p):
                raise AlignCoreError(f"cannot open the score store {p}: it is a broken symlink. {how}") from None
            continue
        except OSError as exc:
            raise AlignCoreError(f"cannot open the score store {p}: {exc.strerror or exc}. {how}") from None
        if not stat.S_ISREG(st.st_mode):
            raise AlignCoreError(f"cannot open the score store {p}: not a regular file, it is {kind_of(st.st_mode)}. {how}")
    if not path.exists():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:  # created below, like the store's folder
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise AlignCoreError(f"cannot open the score store {path}: {parent} is not a writable folder to create it "
                                 f"in. {how}")


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
