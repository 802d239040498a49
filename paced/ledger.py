"""The pass-rate ledger: a durable per-problem record of trials and successes.

Every command that samples and verifies (``passrate``, ``eval``, later the trainers) appends
``(problem_id, trials, successes, model, stage, step, time)`` rows to one SQLite file. SQLite in
WAL mode with one transaction per batch means a process killed mid-write leaves either the whole
batch or none of it — never a half-written record. Reading aggregates the rows of the chosen
model (and optionally stage / step window) into per-problem counts (c, K).

Estimators of the pass rate p and of the PACED weight p^a (1-p)^b from c successes in K trials
(docs/methods.md §1), and the unbiased pass@k (§2), are small pure functions here.
"""
from __future__ import annotations

import math
import os
import random
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    problem_id TEXT NOT NULL,
    trials INTEGER NOT NULL CHECK (trials > 0),
    successes INTEGER NOT NULL CHECK (successes >= 0 AND successes <= trials),
    model TEXT NOT NULL,
    stage TEXT NOT NULL,
    step INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trials_by_model ON trials (model, problem_id);
CREATE TABLE IF NOT EXISTS lineage (
    model TEXT NOT NULL,
    parent TEXT NOT NULL,
    parent_step INTEGER NOT NULL,
    PRIMARY KEY (model, parent)
);
"""
HINTED = ":hinted"   # Guide's hinted rollouts: another prompt's pass rate, never read as p̂


# ---------------------------------------------------------------------------------------------
# Estimators (pure functions)
# ---------------------------------------------------------------------------------------------
def plain(c, k):
    """p̂ = c / K."""
    return np.asarray(c, dtype=float) / np.asarray(k, dtype=float)


def beta_mean(c, k, prior_a: float = 1.0, prior_b: float = 1.0):
    """Posterior mean of p under a Beta(a, b) prior: (c + a) / (K + a + b); never exactly 0 or 1."""
    c, k = np.asarray(c, dtype=float), np.asarray(k, dtype=float)
    return (c + prior_a) / (k + prior_a + prior_b)


def falling(x, n: int):
    """Falling factorial x^(n) = x (x-1) ... (x-n+1), elementwise; x^(0) = 1."""
    x = np.asarray(x, dtype=float)
    out = np.ones_like(x)
    for i in range(n):
        out = out * (x - i)
    return out


def unbiased_power(c, k, a: int, b: int):
    """Unbiased estimate of p^a (1-p)^b from c ~ Binomial(K, p): c^(a) (K-c)^(b) / K^(a+b).

    docs/methods.md §1. Needs integers a, b with a + b <= K (else no unbiased estimator exists
    and this raises). E.g. a = b = 1: c (K - c) / (K (K - 1)), whereas the plug-in p̂(1-p̂) is
    biased by the factor (K-1)/K.
    """
    if int(a) != a or int(b) != b or a < 0 or b < 0:
        raise ValueError(f"unbiased_power needs integer a, b >= 0, got a={a}, b={b}")
    c, k = np.asarray(c, dtype=float), np.asarray(k, dtype=float)
    if np.any(k < a + b):
        raise ValueError(f"unbiased_power needs K >= a + b = {a + b}")
    return falling(c, int(a)) * falling(k - c, int(b)) / falling(k, int(a + b))


PASS_RATE_ESTIMATORS = {"plain": plain, "beta_mean": beta_mean}   # p̂ of (c, K): paced ledger's estimator


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), in the stable product form (Chen et al. 2021).

    1 - prod_{i = n-c+1}^{n} (1 - k / i); exactly 1 when n - c < k.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n (and n itself)."""
    ks = [2 ** i for i in range(int(math.log2(n)) + 1)]
    return ks + ([n] if ks[-1] != n else [])


def histogram(p, bins: int = 8) -> dict:
    """Counts of p̂ over [0, 1] in equal bins, plus the exact-0 and exact-1 counts."""
    p = np.asarray(p, dtype=float)
    counts, edges = np.histogram(p, bins=bins, range=(0.0, 1.0))
    return {"edges": edges.round(4).tolist(), "counts": counts.tolist(),
            "at_zero": int((p == 0).sum()), "at_one": int((p == 1).sum()), "n": int(p.size)}


def tally(ids, successes) -> dict[str, list[int]]:
    """{problem_id: [successes, trials]} of verified samples, one (id, success) per sample."""
    out: dict[str, list[int]] = {}
    for pid, ok in zip(ids, successes):
        ck = out.setdefault(pid, [0, 0])
        ck[0], ck[1] = ck[0] + int(ok), ck[1] + 1
    return out


def gather_counts(counts: dict, world: int) -> dict:
    """Sum {problem_id: [successes, trials]} over the processes of a distributed run (a
    collective: every process must call it); unchanged with one process."""
    if world == 1:
        return counts
    from accelerate.utils import gather_object
    out: dict[str, list[int]] = {}
    for part in gather_object([counts]):
        for pid, (c, k) in part.items():
            ck = out.setdefault(pid, [0, 0])
            ck[0], ck[1] = ck[0] + c, ck[1] + k
    return out


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------
LOCK_WAIT_S = 60   # how long opening a ledger waits for other processes' locks


def is_busy(e: sqlite3.OperationalError) -> bool:
    """SQLite's "database is locked" / "database is busy": another process holds the lock."""
    return "locked" in str(e) or "busy" in str(e)


class Ledger:
    """``Ledger(path).record({...})`` appends; ``.counts(model=...)`` aggregates to (c, K)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path, self.readonly = Path(path), readonly
        self._db, self._pid = None, None
        if readonly:   # paced ledger: reads only, so a ledger on a read-only disk can be inspected
            try:
                self._connect().execute("SELECT COUNT(*) FROM trials").fetchone()
                return
            except sqlite3.DatabaseError as e:
                self._db = None
                raise ValueError(f"{self.path}: not a pass-rate ledger ({e}); give ledger.path a new file "
                                 f"or a paced ledger (SQLite)") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                with self._connect() as db:
                    db.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as e:
                # Several processes creating one new ledger at once: switching it to WAL takes an
                # exclusive lock and SQLite answers "locked" without waiting (no busy handler).
                self._db = None
                if not is_busy(e) or time.monotonic() > deadline:
                    raise ValueError(f"{self.path}: cannot open the pass-rate ledger ({e})") from None
                time.sleep(0.01 + 0.05 * random.random())
            except sqlite3.DatabaseError as e:   # a text file, random bytes, a damaged database
                self._db = None
                raise ValueError(f"{self.path}: not a pass-rate ledger ({e}); give ledger.path a new file "
                                 f"or a paced ledger (SQLite)") from None

    def _connect(self) -> sqlite3.Connection:
        """One connection per process, kept open: opening one per call (and the fsync its close
        forces) cost 5-25 ms per record on a busy disk, every RL step. WAL with
        synchronous=NORMAL: a killed process loses no committed transaction (a power cut may
        lose the last few, never consistency)."""
        if self.readonly and (self._db is None or self._pid != os.getpid()):
            # mode=ro still needs the WAL's -shm file (a read-only directory has none): immutable
            uri = f"file:{quote(str(self.path.resolve()))}"
            try:
                self._db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
                self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                self._db = sqlite3.connect(f"{uri}?immutable=1", uri=True)
            self._pid = os.getpid()
        if self._db is None or self._pid != os.getpid():  # a forked child opens its own
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._pid = os.getpid()
        return self._db

    def close(self) -> None:
        """Close this process's connection (the last one out folds the WAL back into the file)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def record(self, results: dict[str, tuple[int, int]], model: str, stage: str,
               step: int = 0) -> None:
        """Append {problem_id: (successes, trials)} in one transaction (all or nothing)."""
        now = time.time()
        rows = []
        for pid, (c, k) in results.items():
            if not 0 <= int(c) <= int(k) or int(k) < 1:
                raise ValueError(f"ledger: problem {pid!r}: need 0 <= successes <= trials, 1 <= trials;"
                                 f" got successes={c}, trials={k}")
            rows.append((str(pid), int(k), int(c), model, stage, int(step), now))
        with self._connect() as db:  # `with db` = one transaction, rolled back on error
            db.executemany("INSERT INTO trials (problem_id, trials, successes, model, stage, step, time)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def counts(self, model: str | None = None, stage: str | None = None, step: int | None = None,
               problem_ids=None, latest_only: bool = False,
               before_step: int | None = None) -> dict[str, tuple[int, int]]:
        """{problem_id: (successes, trials)} summed over the matching rows.

        ``step``: only the rows recorded at that training step (one estimate of a moving model).
        ``before_step``: only the rows recorded before that step (what a resumed run had seen).
        ``latest_only``: use only each problem's most recent row (a fresh estimate after the
        model moved) instead of the running sum over its whole history.
        """
        where, args = [], []
        for column, value in (("model", model), ("stage", stage), ("step", step)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before_step is not None:
            where.append("step < ?")
            args.append(int(before_step))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        if latest_only:
            sql = (f"SELECT problem_id, successes, trials FROM trials WHERE id IN "
                   f"(SELECT MAX(id) FROM trials {clause} GROUP BY problem_id)")
        else:
            sql = f"SELECT problem_id, SUM(successes), SUM(trials) FROM trials {clause} GROUP BY problem_id"
        out = {pid: (int(c), int(k)) for pid, c, k in self._connect().execute(sql, args)}
        if problem_ids is not None:
            wanted = set(problem_ids)
            out = {pid: ck for pid, ck in out.items() if pid in wanted}
        return out

    def forget_from(self, model: str, stage: str, step: int) -> int:
        """Delete the (model, stage) rows recorded at ``step`` or later: what a killed run wrote
        past the checkpoint it resumes from (the resumed run records those steps again)."""
        with self._connect() as db:
            cur = db.execute("DELETE FROM trials WHERE model = ? AND stage = ? AND step >= ?",
                             (model, stage, int(step)))
            return cur.rowcount

    def summary(self) -> list[dict]:
        """One row per (model, stage): problems, trials, when — for ``paced ledger``."""
        sql = ("SELECT model, stage, COUNT(DISTINCT problem_id), SUM(trials), SUM(successes),"
               " MIN(time), MAX(time), MAX(step) FROM trials GROUP BY model, stage ORDER BY MIN(time)")
        return [dict(zip(("model", "stage", "problems", "trials", "successes", "first", "last",
                          "max_step"), r)) for r in self._connect().execute(sql)]

    # -- lineage: which model a run started from, so its p̂ can start from that model's rows --
    def set_parent(self, model: str, parent: str, parent_step: int) -> None:
        """Record that ``model``'s step 0 is ``parent`` at its step ``parent_step``."""
        if parent == model:
            raise ValueError(f"ledger: model {model!r} cannot be its own parent")
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO lineage (model, parent, parent_step) VALUES (?, ?, ?)",
                       (model, parent, int(parent_step)))

    def lineage(self, model: str, max_depth: int = 32) -> list[tuple[str, int, int]]:
        """[(tag, shift, depth)]: ``model`` (shift 0, depth 0), then its ancestors, nearest first.
        A row of tag at step s is ``now + shift − s`` steps old for a reader at step ``now`` of
        ``model``; depth counts model versions back. Each tag once (its nearest path)."""
        out, seen, frontier = [(model, 0, 0)], {model}, [(model, 0, 0)]
        db = self._connect()
        while frontier and frontier[0][2] < max_depth:
            nxt = []
            for tag, shift, depth in frontier:
                for parent, at in self._parents(db, tag):
                    if parent not in seen:
                        seen.add(parent)
                        nxt.append((parent, shift + int(at), depth + 1))
            out += nxt
            frontier = nxt
        return out

    @staticmethod
    def _parents(db, tag: str) -> list:
        try:
            return db.execute("SELECT parent, parent_step FROM lineage WHERE model = ? ORDER BY parent",
                              (tag,)).fetchall()
        except sqlite3.OperationalError as e:   # a ledger from before lineage, opened read-only
            if "no such table" in str(e):
                return []
            raise

    def max_step(self, model: str) -> int | None:
        """The last step ``model`` recorded rows at (None: no rows)."""
        row = self._connect().execute("SELECT MAX(step) FROM trials WHERE model = ?", (model,)).fetchone()
        return None if row[0] is None else int(row[0])

    def discounted_counts(self, model: str, ids: list[str], now: int, recency: str = "all",
                          half_life: float = float("inf"), window: float = float("inf"),
                          forget_by: str = "step", stages: list[str] | None = None,
                          exclude: tuple[str, int] | None = None):
        """Per-problem discounted counts (c_eff, k_eff), each (len(ids),) float, over the rows
        of ``model`` up to step ``now`` and of its ancestors (``lineage``), every stage except
        Guide's hinted ones (or only ``stages``), each row weighted by
        ``posterior.RECENCY[recency]`` of its age: optimizer steps (``forget_by`` "step") or
        model versions back (``forget_by`` "version"). ``exclude`` = (stage, step): leave out
        this run's rows of that stage at that step (an estimate being made now)."""
        from .posterior import effective_counts

        pos = {pid: i for i, pid in enumerate(ids)}
        index, c, k, ages = [], [], [], []
        db = self._connect()
        for tag, shift, depth in self.lineage(model):
            sql = "SELECT problem_id, successes, trials, step, stage FROM trials WHERE model = ?"
            args: list = [tag]
            if depth == 0:   # this run: nothing past the reader's step (a resumed run's future)
                sql += " AND step <= ?"
                args.append(int(now))
                if exclude is not None:
                    sql += " AND NOT (stage = ? AND step = ?)"
                    args += [exclude[0], int(exclude[1])]
            for pid, ci, ki, si, stage in db.execute(sql, args):
                if pid in pos and (stage in stages if stages is not None else not stage.endswith(HINTED)):
                    index.append(pos[pid])
                    c.append(ci)
                    k.append(ki)
                    ages.append(max(now + shift - si, 0) if forget_by == "step" else depth)
        return effective_counts(index, c, k, ages, len(ids), recency, half_life, window)

    def pass_rates(self, estimator: str = "plain", **filters) -> dict[str, float]:
        counts = self.counts(**filters)
        if not counts:
            return {}
        ids = list(counts)
        c = np.array([counts[i][0] for i in ids])
        k = np.array([counts[i][1] for i in ids])
        return dict(zip(ids, PASS_RATE_ESTIMATORS[estimator](c, k).tolist()))
