"""Comparing an extracted answer with the gold: normalised strings, plain numbers, math-verify.

Nothing here ``eval``s model text; every public function is total and fast on any input (1 MB of
text, 100,000 nested braces, ``9**9**9**9``, ``\\boxed{10^{10^{10^{10}}}}``). Cheapest first:
``normalize`` + string equality; ``numeric_equal`` (plain numbers regex-parsed into ``Fraction``,
<= 50 chars, |exp| < 1000); then ``math_equal``, whose guards (length <= 1000, balanced brackets nested <= 20 deep,
no ``**``, <= 30 carets, no exponent that is itself a numeric power like ``9^9^9`` or
``x^{10^{10}}``, no numeric exponent > 10000, no literal > 100 digits, no ``1e308``-style
exponent, no ``n!`` with n > 1000) run before math-verify. ``extract_boxed`` is here too (one
linear token pass), because normalising needs no more. Reading the answer out of a completion is
``formats``; the verifiers that put the two together are ``verifiers``. This file imports nothing
from paced: the worker loads it alone.

Worker: one process, started lazily by the first ``math_equal`` past the guards, then reused. It
is a fresh interpreter (``subprocess.Popen([sys.executable, "-c", ...])``: spawn semantics, never
a bare ``fork`` of a caller holding torch threads) that loads this file by path and talks over a
``multiprocessing.connection.Connection`` on a socketpair; unlike multiprocessing's "spawn" it does
not re-run the caller's ``__main__`` (fails for stdin scripts, re-runs unguarded ones) and works
from daemonic processes. Start-up (~0.5 s: sympy + math-verify) is not charged to ``timeout`` (the
child says "ready" first). Past ``timeout`` the child is SIGKILLed, the pair is retried (see ``math_equal``) or False and a new
child starts at once in the background; a crashed child is also False and replaced. ``atexit``
kills it; it exits on EOF if the parent dies. Decided pairs are kept in a bounded LRU cache; a
timeout is retried at 4x, then counted in ``UNDECIDED``, never cached. Without math-verify, or if no worker can start,
``math_equal`` falls back to normalized + numeric equality.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.util
import math
import os
import re
import socket
import subprocess
import sys
import threading
from collections import OrderedDict
from fractions import Fraction
from multiprocessing.connection import Connection

__all__ = ["extract_boxed", "normalize", "parse_number", "numeric_equal", "math_equal", "set_math_timeout",
           "math_timeout", "take_undecided", "UNDECIDED", "TEXT_WRAP"]

MAX_MATH_LEN = 1000      # characters of an extracted answer that math-verify may see
MAX_DEPTH = 20           # bracket nesting depth (real answers nest far less)
MAX_NORMALIZE = 20_000   # longer strings are only stripped by normalize()
_STARTUP_S = 120.0       # generous: a cold start on a loaded machine
_CACHE_SIZE = 65_536

_BOX_TOK = re.compile(r"\\(?:boxed|fbox)\s*\{|\\.|[{}]", re.S)
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}``/``\\fbox{...}``; None if absent/unbalanced."""
    first = _BOX_START.search(text) if isinstance(text, str) else None
    if first is None:
        return None
    depth, box_depth, start, end = 0, None, None, None   # depth counted from the first opener
    for m in _BOX_TOK.finditer(text, first.start()):
        tok = m.group()
        if tok == "{" or (len(tok) > 2 and tok.endswith("{")):
            depth += 1
            if tok != "{" and box_depth is None:   # a top-level box opens
                box_depth, start, end = depth, m.end(), None
        elif tok == "}":
            if depth == box_depth:
                end, box_depth = m.start(), None
            depth = max(depth - 1, 0)
    return None if start is None or end is None else text[start:end]


TEXT_WRAP = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\[!,;:](?![A-Za-z])")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize(ans: str) -> str:
    """Conservative canonical form: drops ``$``/``\\(\\)``/``\\[\\]`` wrappers, ``\\left``/``\\right``,
    ``\\!``-style spacing, ``\\text{}``-like wrappers, a trailing ``.``, thousands commas in a pure
    number, and whitespace (kept, as one space, only between two alphanumerics)."""
    if not isinstance(ans, str):
        return ""
    s = ans.strip()
    if len(s) > MAX_NORMALIZE:
        return s
    s = s.rstrip(".").rstrip()
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
            s = s[len(a):len(s) - len(b)].strip()
            break
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = TEXT_WRAP.sub(r"\1", _SPACING.sub("", s))
    s = re.sub(r"(?<![A-Za-z0-9]) | (?![A-Za-z0-9])", "", re.sub(r"\s+", " ", s).strip())
    s = s.rstrip(".").strip()
    return s.replace(",", "") if _THOUSANDS.fullmatch(s) else s


_DEC = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,3}))?")
_FRAC = re.compile(r"([+-]?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_SLASH = re.compile(r"([+-]?)\(?([^/()]+)\)?/\(?([^/()]+)\)?")


def parse_number(s: str) -> Fraction | None:
    s = normalize(s) if len(s) <= 200 else s
    if not s or len(s) > 50:
        return None
    if s.endswith("%"):  # a percentage compares as its number: 50\% == 50
        s = s[:-2] if s.endswith("\\%") else s[:-1]
    m = _FRAC.fullmatch(s) or _SLASH.fullmatch(s)
    if m:
        num, den = parse_number(m.group(2)), parse_number(m.group(3))
        if num is None or not den:
            return None
        return -num / den if m.group(1) == "-" else num / den
    m = _DEC.fullmatch(s.replace(",", "") if _THOUSANDS.fullmatch(s) else s)
    if not m:
        return None
    v = Fraction(m.group(2).rstrip(".")) * Fraction(10) ** int(m.group(3) or 0)
    return -v if m.group(1) == "-" else v


def numeric_equal(a: str, b: str, rel_tol: float = 1e-6) -> bool | None:
    """Two plain numbers (ints, decimals, 1e-3, a/b, \\frac{a}{b}, 50\\%) equal exactly or within
    ``rel_tol`` (relative); None when either side is not a plain number."""
    try:
        x, y = parse_number(a), parse_number(b)
        if x is None or y is None:
            return None
        return x == y or abs(x - y) <= Fraction(rel_tol) * max(abs(x), abs(y))
    except Exception:  # defensive: parsing is regex-bounded
        return None


_OPEN, _CLOSE = "([{", ")]}"
_ATOM = re.compile(r"\s*(?:[+-]\s*)?(?:\d+(?:\.\d+)?|\\[A-Za-z]+|[A-Za-z])")
_CMDS = re.compile(r"\\(?:frac|dfrac|tfrac|cdot|times|left|right|sqrt|div)(?![A-Za-z])")


def _exponent_end(s: str, i: int) -> int:
    """Index past the exponent starting at s[i] (just after a ``^``): a group or one atom."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] in _OPEN:
        depth = 0
        for j in range(i, len(s)):
            depth += (s[j] in _OPEN) - (s[j] in _CLOSE)
            if depth == 0:
                return j + 1
        return len(s)
    m = _ATOM.match(s, i)
    return m.end() if m else i


def _group_start(s: str, close: int) -> int:
    """Index of the bracket that opens the group closed at ``s[close]`` (0 if none)."""
    depth = 0
    for i in range(close, -1, -1):
        depth += (s[i] in _CLOSE) - (s[i] in _OPEN)
        if depth == 0:
            return i
    return 0


def _hostile(s: str) -> bool:
    """True when ``s`` must not reach sympy: too long or deep, python power, or power towers."""
    if len(s) > MAX_MATH_LEN or "**" in s or s.count("^") > 30:
        return True
    depth = 0
    for ch in s:
        depth += (ch in _OPEN) - (ch in _CLOSE)
        if depth > MAX_DEPTH or depth < 0:
            return True
    if depth:   # unbalanced brackets: no expression, and sympy can take seconds to say so
        return True
    if re.search(r"\d\s*[eE]\s*[+-]?\s*\d{3,}", s):   # 1e308, 1E999999: sympy takes seconds
        return True
    if any(len(d) > 100 for d in re.findall(r"\d+", s)) or \
            any(int(d) > 1000 for d in re.findall(r"(\d+)\s*!", s)):
        return True
    for m in re.finditer(r"[)\]}]\s*!", s):   # (10^100)!: a group's factorial with a power or a big number
        group = s[_group_start(s, m.start()):m.start()]
        if "^" in group or re.search(r"\d{4,}", group):
            return True
    for m in re.finditer(r"\^", s):
        end = _exponent_end(s, m.end())
        while s[end:].lstrip(" ").startswith("^"):  # a^b^c: the chain is the first exponent
            end = _exponent_end(s, s.index("^", end) + 1)
        exp = s[m.end():end]
        bare = exp.strip(" {}()")
        if (bare.isdigit() and int(bare) > 10_000) or \
                ("^" in exp and not re.search(r"[A-Za-z]", _CMDS.sub("", exp))):
            return True  # a huge numeric exponent, or one that is itself a numeric power
    return False


# The child loads this file by path, not ``paced.tasks``: start-up never depends on the package.
_CHILD = ("import sys, importlib.util as u; from multiprocessing.connection import Connection; "
          "s = u.spec_from_file_location('_paced_answers_worker', sys.argv[2]); "
          "m = u.module_from_spec(s); s.loader.exec_module(m); m._worker_main(Connection(int(sys.argv[1])))")


def _worker_main(conn) -> None:
    """The child's loop: (pred, gold, timeout) in, bool out; exits on EOF."""
    import logging
    import signal
    logging.disable(logging.CRITICAL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        from math_verify import parse, verify
    except Exception as e:
        return conn.send(("error", repr(e)))
    conn.send("ready")
    while True:
        try:
            pred, gold, timeout = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            t = 2 * math.ceil(timeout) + 1   # math-verify's own timeouts: past ours, never first
            g = parse(f"${gold}$", parsing_timeout=t) or parse(gold, parsing_timeout=t)
            p = parse(f"${pred}$", parsing_timeout=t) or parse(pred, parsing_timeout=t)
            ok = bool(g and p and verify(g, p, timeout_seconds=t))
        except BaseException:  # RecursionError, sympy internals, math-verify timeouts
            ok = False
        try:
            conn.send(ok)
        except (OSError, ValueError):
            return


class _Worker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc = self.conn = None
        self.ready = False
        self.broken = importlib.util.find_spec("math_verify") is None

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno()), os.path.abspath(__file__)],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn, self.ready = Connection(ours.detach()), False

    def kill(self) -> None:
        proc, conn, self.proc, self.conn, self.ready = self.proc, self.conn, None, None, False
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        if conn is not None:
            conn.close()

    def _ensure(self) -> bool:
        try:
            if not self.broken and (self.proc is None or self.proc.poll() is not None):
                self.kill()
                self._spawn()
            if not self.broken and not self.ready:
                if not self.conn.poll(_STARTUP_S) or self.conn.recv() != "ready":
                    raise RuntimeError("math-verify worker failed to start")
                self.ready = True
        except Exception:  # cannot exec, import error in the child, ...
            self.kill()
            self.broken = True
        return not self.broken

    def call(self, pred: str, gold: str, timeout: float) -> tuple[bool | None, bool]:
        """(result, or None when no worker can run; timed_out)."""
        with self.lock:
            if not self._ensure():
                return None, False
            try:
                self.conn.send((pred, gold, timeout))
                if self.conn.poll(max(timeout, 0.0)):
                    return bool(self.conn.recv()), False
                timed_out = True
            except (EOFError, OSError):  # the child died (e.g. a C-level crash)
                timed_out = False
            self.kill()
            try:
                self._spawn()  # restart now; its imports overlap the caller's work
            except Exception:
                self.broken = True
            return False, timed_out


_WORKER = _Worker()
atexit.register(_WORKER.kill)
_CACHE: OrderedDict = OrderedDict()   # (pred, gold) -> (result, timeout it timed out at | None)
_CACHE_LOCK = threading.Lock()


UNDECIDED = {"count": 0, "last": None, "taken": 0}   # pairs that timed out at every budget (never cached)
_TIMEOUT: list[float] = []   # set_math_timeout's value (the config's run.math_timeout), if set


def set_math_timeout(seconds: float) -> None:
    """The first budget of every later math-verify call in this process (``run.math_timeout``)."""
    _TIMEOUT[:] = [max(0.1, float(seconds))]


def math_timeout() -> float:
    """The first budget of a math-verify call, seconds: ``set_math_timeout``'s, else
    ``PACED_MATH_TIMEOUT``, else 2."""
    if _TIMEOUT:
        return _TIMEOUT[0]
    try:
        return max(0.1, float(os.environ.get("PACED_MATH_TIMEOUT", "2")))
    except ValueError:
        return 2.0


def take_undecided() -> int:
    """Verdicts left undecided (timed out at both budgets, counted wrong) since the last call:
    what a training step logs as ``undecided``."""
    new = UNDECIDED["count"] - UNDECIDED["taken"]
    UNDECIDED["taken"] = UNDECIDED["count"]
    return new


def math_equal(pred: str, gold: str, timeout: float | None = None) -> bool:
    """Symbolic equality via math-verify in a killable worker; False on anything suspicious.

    A verdict does not depend on how busy the machine is: a call that times out is retried once
    with 4x the budget (``timeout``, default ``math_timeout()``); one that times out again is
    False, counted in ``UNDECIDED`` and never cached, so a later call decides it afresh."""
    timeout = math_timeout() if timeout is None else timeout
    try:
        if not isinstance(pred, str) or not isinstance(gold, str) or _hostile(pred) or _hostile(gold):
            return False
        if normalize(pred) and normalize(pred) == normalize(gold):
            return True
        key = (pred, gold)
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None and (hit[1] is None or timeout <= hit[1]):
                _CACHE.move_to_end(key)
                return hit[0]
        res, timed_out = _WORKER.call(pred, gold, timeout)
        if timed_out:       # a loaded machine, or a truly slow pair: one more try, 4x the time
            res, timed_out = _WORKER.call(pred, gold, 4 * timeout)
        if res is None:  # no math-verify / no worker possible: cheap fallback
            return bool(numeric_equal(pred, gold))
        if timed_out:
            UNDECIDED["count"] += 1
            UNDECIDED["last"] = (pred[:80], gold[:80])
            return False
        with _CACHE_LOCK:
            _CACHE[key] = (res, None)
            _CACHE.move_to_end(key)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return res
    except Exception:
        return False
