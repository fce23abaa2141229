"""The score store: one SQLite file (WAL mode) holding scores and runs (and the leaderboard's table,
whose schema and rows belong to :mod:`aligncore.leaderboard`).

Scores are keyed by (image content sha256, branch fingerprint), so a re-run, a
re-fusion or a resumed run scores only what is missing, whatever the file is called.
Several processes may write at once: every write is a short transaction and waits on
a busy timeout instead of failing.

A store is a file anyone may have handed over, so nothing read from it is trusted: a stored
score that is not a finite number in [0, 1] (or a row without one) counts as missing and is
scored again, replacing the bad row; and a store whose schema holds what aligncore never
creates (triggers, views, other definitions of its tables) is refused when opened, since a
planted trigger could change what is written (``PRAGMA trusted_schema`` is off as well).
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
    logit       REAL,
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


#: columns of the tables this module owns: (name, declared type, not null, primary-key position)
COLUMNS = {
    "scores": [("sha256", "TEXT", 1, 1), ("fingerprint", "TEXT", 1, 2), ("branch", "TEXT", 1, 0), ("score", "REAL", 0, 0),
               ("explanation", "TEXT", 0, 0), ("error", "TEXT", 0, 0), ("created", "REAL", 1, 0), ("logit", "REAL", 0, 0)],
    "runs": [("run_id", "TEXT", 0, 1), ("created", "REAL", 1, 0), ("kind", "TEXT", 1, 0), ("out_dir", "TEXT", 0, 0),
             ("config", "TEXT", 1, 0), ("summary", "TEXT", 0, 0)],
}
#: columns added after the first release (ALTER TABLE ... ADD COLUMN on older stores)
ADDED_COLUMNS = {"scores": [("logit", "REAL")]}
#: a stored score is valid when this holds (NULL, text, inf and values outside [0, 1] are not)
VALID_SCORE_SQL = "(typeof(score) IN ('real', 'integer') AND score >= 0 AND score <= 1)"
#: words a table definition of aligncore never holds; a definition with one was not written by aligncore
FOREIGN_SQL = ("CHECK", "GENERATED", "REFERENCES", "COLLATE", "ON CONFLICT", " AS ", "DEFAULT")


def valid_score(value) -> bool:
    """A stored score aligncore may use: a finite number in [0, 1]."""
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1


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
            self.conn.execute("PRAGMA trusted_schema = OFF")  # no function in a planted schema runs
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
                self._add_columns()
                self.check_schema()
                return
            except (sqlite3.OperationalError, AlignCoreError) as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _add_columns(self) -> None:
        """Add the columns a store written by an earlier release lacks (a read-only store reads without them)."""
        for table, cols in ADDED_COLUMNS.items():
            for name, typ in cols:
                if name in self._columns(table):
                    continue
                try:
                    with self.transaction() as c:
                        if name not in {r[1] for r in c.execute(f"PRAGMA table_info({table})")}:
                            c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {typ}")
                except AlignCoreError:
                    pass

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}

    def check_schema(self, extra_tables: dict[str, list[tuple]] | None = None) -> None:
        """Refuse a store holding triggers or views, or a table of aligncore's defined otherwise than
        aligncore defines it (``extra_tables``: other modules' tables, e.g. the leaderboard's, as
        {name: [(column, type, notnull, pk), ...]} where extra columns are allowed only if listed)."""
        tables = {**COLUMNS, **(extra_tables or {})}
        where = f"the score store {self.path}"
        for typ, name, sql in self.conn.execute("SELECT type, name, sql FROM sqlite_master"):
            if typ in ("trigger", "view"):
                raise AlignCoreError(
                    f"{where} holds a {typ} {name!r} that aligncore never creates; a planted {typ} could change what "
                    f"is written or read, so the store is refused. Inspect it (sqlite3 {self.path} .schema), or use "
                    f"another store (--store or {STORE_ENV}).")
            if typ == "table" and name in tables:
                self._check_table(name, sql or "", tables[name], where)

    def _check_table(self, name: str, sql: str, want: list[tuple], where: str) -> None:
        cols = [(r[1], str(r[2]).upper(), int(r[3]), int(r[5]), int(r[6])) for r in
                self.conn.execute(f"PRAGMA table_xinfo({name})")]
        expected = {c[0]: c for c in want}
        body = " ".join(sql.upper().split())
        bad = [w.strip() for w in FOREIGN_SQL if w in body]
        wrong = [c[0] for c in cols if c[0] not in expected or c[4] != 0 or expected[c[0]][1:] != c[1:4]]
        missing = sorted(set(expected) - {c[0] for c in cols} - {c for c, *_ in _optional(name)})
        if bad or wrong or missing:
            what = (f"columns {wrong} differ from aligncore's" if wrong else f"columns {missing} are missing" if missing
                    else f"its definition uses {', '.join(bad)}")
            raise AlignCoreError(f"{where}: table {name!r} is not the table aligncore creates ({what}); the store is "
                                 f"refused. Use another store (--store or {STORE_ENV}).")

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
        """The subset of ``hashes`` that already have a valid score for ``fingerprint`` (anything else is
        scored again)."""
        hs = list(dict.fromkeys(hashes))
        found: set[str] = set()
        with self.reading("scores"):
            for i in range(0, len(hs), 900):
                chunk = hs[i : i + 900]
                q = (f"SELECT sha256 FROM scores WHERE fingerprint = ? AND {VALID_SCORE_SQL} "
                     f"AND sha256 IN ({','.join('?' * len(chunk))})")
                found.update(r[0] for r in self.conn.execute(q, [fingerprint, *chunk]))
        return found

    def put_scores(self, fingerprint: str, branch: str, rows: Iterable[tuple]) -> int:
        """Insert ``(sha256, score, explanation, error, logit)`` rows (the last three optional). An existing
        valid score is kept (first writer wins); an invalid stored row is replaced. Rows whose score is not
        valid are not written."""
        now = time.time()
        data = [(r[0], fingerprint, branch, r[1], r[2] if len(r) > 2 else None, r[3] if len(r) > 3 else None, now,
                 _finite_or_none(r[4]) if len(r) > 4 else None) for r in rows if valid_score(r[1])]
        if not data:
            return 0
        with self.transaction() as c:
            cur = c.executemany(
                "INSERT INTO scores (sha256, fingerprint, branch, score, explanation, error, created, logit) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256, fingerprint) DO UPDATE SET "
                "branch = excluded.branch, score = excluded.score, explanation = excluded.explanation, "
                "error = excluded.error, created = excluded.created, logit = excluded.logit "
                f"WHERE NOT {VALID_SCORE_SQL.replace('score', 'scores.score')}",
                data,
            )
        return cur.rowcount

    def get_scores(self, fingerprint: str, hashes: Iterable[str]) -> dict[str, tuple]:
        """{sha256: (score, explanation, error, logit)} for the hashes with a valid stored score; a row whose
        score is not a finite number in [0, 1] is left out (so it is scored again), a non-finite logit is None."""
        hs = list(dict.fromkeys(hashes))
        out: dict[str, tuple] = {}
        with self.reading("scores"):
            logit_col = "logit" if "logit" in self._columns("scores") else "NULL"  # a read-only store from before it
            for i in range(0, len(hs), 900):
                chunk = hs[i : i + 900]
                q = (
                    f"SELECT sha256, score, explanation, error, {logit_col} FROM scores WHERE fingerprint = ? "
                    f"AND sha256 IN ({','.join('?' * len(chunk))})"
                )
                for sha, score, expl, err, logit in self.conn.execute(q, [fingerprint, *chunk]):
                    if valid_score(score):
                        out[sha] = (float(score), expl if isinstance(expl, str) else None,
                                    err if isinstance(err, str) else None, _finite_or_none(logit))
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


def _finite_or_none(v) -> float | None:
    import math

    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _optional(table: str) -> list[tuple]:
    """Columns a store written before they were added may lack."""
    return ADDED_COLUMNS.get(table, [])
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
