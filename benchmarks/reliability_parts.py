"""What benchmarks/reliability.py is made of: the seeded hostile-input generators (data files,
configs, answer strings), the case worker that runs them through paced's real loaders in a
killable subprocess, and the checks on what a run left on disk.

    python benchmarks/reliability_parts.py worker      # the worker (started by the harness)

The worker reads one JSON request per line on stdin and answers one JSON line on a private copy
of stdout (fd 1 itself goes to /dev/null, so nothing paced prints can corrupt the protocol).
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT), "PACED_DEBUG": "0"}
NOBODY = 65534
SMOKE = ROOT / "configs" / "smoke"
ROOTS = {  # config root -> (command, base YAML)
    "SFTConfig": ("sft", SMOKE / "sft.yaml"), "DistillConfig": ("distill", SMOKE / "distill.yaml"),
    "RLConfig": ("rl", SMOKE / "rl.yaml"), "EvalConfig": ("eval", SMOKE / "eval.yaml"),
    "PassrateConfig": ("passrate", SMOKE / "passrate.yaml"), "LedgerConfig": ("ledger", SMOKE / "ledger.yaml"),
    "ContinualConfig": ("continual", SMOKE / "continual.yaml"), "DemoConfig": ("demo", SMOKE / "demo.yaml"),
    "SNRConfig": ("snr", ROOT / "configs" / "snr.yaml")}


# ============================================================================ the case worker
class Worker:
    """A ``reliability_parts.py worker`` subprocess; ``call(req, timeout)`` answers a dict, or
    ``{"status": "hang"}`` after ``timeout`` seconds (the worker is then SIGKILLed and restarted).
    ``uid``: run it as that user (root only: mode-000 files and read-only dirs really refuse)."""

    def __init__(self, uid: int | None = None, home: str | None = None):
        self.uid, self.home, self.proc = uid, home, None

    def _start(self):
        env = dict(ENV, HOME=self.home or os.environ.get("HOME", "/tmp"))

        def drop():
            os.setgid(self.uid)
            os.setgroups([])
            os.setuid(self.uid)
        self.proc = subprocess.Popen([PY, __file__, "worker"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     preexec_fn=drop if self.uid is not None else None)

    def call(self, req: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError):
            line = ""
        if line:
            return json.loads(line)
        hung = self.proc.poll() is None
        self.kill()
        return {"status": "hang" if hung else "traceback", "type": "worker died", "msg": "", "secs": timeout}

    def kill(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


def can_drop_privileges() -> bool:
    """Root can run cases as nobody (where chmod 000 really refuses a read)."""
    if os.geteuid() != 0:
        return False
    try:  # the interpreter may live where nobody cannot reach it (/root is 0700)
        r = subprocess.run([PY, "-c", "import paced.tasks.files"], cwd="/", env=ENV, capture_output=True,
                           preexec_fn=lambda: (os.setgid(NOBODY), os.setgroups([]), os.setuid(NOBODY)))
    except OSError:
        return False
    return r.returncode == 0


KEYED = __import__("re").compile(r"^[\w.\[\]]+: |config key|^override ")   # 'optim.lr: ...' names its key


def _outcome(fn, expected, names=(), trace_memory=False, keyed=False) -> dict:
    """Run ``fn``: accepted / clear (an expected type whose message names one of ``names``, or
    with ``keyed`` a config key) / unclear (expected type, message names neither) / traceback
    (anything else)."""
    import traceback
    import tracemalloc
    if trace_memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    out = {"status": "accepted", "type": "", "msg": ""}
    try:
        res = fn()
        out["result"] = res
    except expected as e:
        msg = " ".join(str(e).split())
        ok = bool(msg) and (not names or any(n and n in msg for n in names) or (keyed and KEYED.search(msg)))
        out = {"status": "clear" if ok else "unclear", "type": type(e).__name__, "msg": msg[:300]}
    except BaseException as e:  # noqa: BLE001 - a bug in paced: what we count
        out = {"status": "traceback", "type": type(e).__name__, "msg": str(e)[:300],
               "where": "".join(traceback.format_exception(e)[-3:])[-600:]}
    out["secs"] = time.perf_counter() - t0
    if trace_memory:
        out["peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    return out


def _op_data(req: dict) -> dict:
    from paced.config import DataSource
    from paced.tasks import load_sources
    from paced.tasks.files import DataError, load_file
    saved = {k: os.environ.get(k) for k in req.get("env", {})}
    os.environ.update(req.get("env", {}))
    try:
        path, names = req["path"], [Path(req["path"]).name]
        if req["via"] == "load_sources":
            def fn():
                return len(load_sources([DataSource(source=path, on_error=req["on_error"])]))
        else:
            def fn():
                exs, skipped = load_file(path, on_error=req["on_error"])
                return [len(exs), skipped]
        return _outcome(fn, (DataError, ValueError, OSError), names)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _op_config(req: dict) -> dict:
    from paced import config as C
    root = getattr(C, req["root"])

    def fn():
        C.load_config(root, req["path"], req["overrides"], req.get("run_dir"))
        return None
    return _outcome(fn, (C.ConfigError,), req.get("names", ()), req.get("trace_memory", False), keyed=True)


def _children() -> list[dict]:
    import psutil
    return [{"pid": c.pid, "status": c.status()} for c in psutil.Process().children(recursive=True)
            if c.is_running()]


def _op_answers(req: dict) -> dict:
    """Every string of ``answer_strings(seed, n)[start:start+count]`` through every example of
    ``verifier_examples()`` (paced.tasks.verify, timed) and the VERIFIERS functions directly
    (exceptions and non-bool results counted), plus hostile golds; children checked after."""
    from paced.tasks import VERIFIERS, formats, verify
    from paced.tasks.base import Example
    strings = answer_strings(req["seed"], req["n"])[req["start"]: req["start"] + req["count"]]
    exs = verifier_examples()
    times, raised, nonbool, slow = [], Counter(), 0, []
    if req.get("math_timeout"):
        os.environ["PACED_MATH_TIMEOUT"] = str(req["math_timeout"])
    has_final = getattr(formats, "has_final_answer", None)

    def timed(label, fn):
        """Time one call of the verifier itself (exceptions and non-bool results counted)."""
        nonlocal nonbool
        t0 = time.perf_counter()
        try:
            r = fn()
            if not isinstance(r, bool):
                nonbool += 1
        except BaseException as e:  # noqa: BLE001
            raised[f"{label}: {type(e).__name__}: {str(e)[:80]}"] += 1
        dt = time.perf_counter() - t0
        times.append(dt)
        if dt > 1.0:
            slow.append([label, round(dt, 3)])
        return dt

    def both(label, s, ex):
        """The VERIFIERS function directly (timed), then the public paced.tasks.verify (which
        swallows exceptions; skipped after a call over 1 s: the same work again)."""
        if timed(label, lambda: VERIFIERS[ex.verifier](s, ex)) <= 1.0:
            verify(s, ex)
            verify(s, ex, False) if has_final is not None else None   # a completion cut at the limit

    for j, (cat, s) in enumerate(strings, req["start"]):
        for ex in exs:
            both(f"{cat}/{ex.verifier}/{ex.answer_format}: {s[:40]!r}", s, ex)
            if has_final is not None:
                timed(f"has_final_answer {cat}/{ex.answer_format}", lambda: has_final(s, ex.answer_format, ex.answer_regex))
        for v in VERIFIERS if j % req.get("gold_every", 1) == 0 else ():  # the string as the reference answer
            gold = Example(id="g", prompt="1 2 3:6=" if v == "countdown" else "q", answer=s, verifier=v)
            for comp in ("42", s):
                both(f"gold {cat}/{v}: {s[:40]!r} vs {comp[:20]!r}", comp, gold)
    from paced.tasks import answers
    return {"status": "ok", "times": times, "raised": dict(raised), "nonbool": nonbool, "slow": slow,
            "children": _children(), "undecided": answers.UNDECIDED["count"]}


def worker_main() -> None:
    out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    import logging
    logging.disable(logging.CRITICAL)
    ops = {"data": _op_data, "config": _op_config, "answers": _op_answers,
           "children": lambda req: {"status": "ok", "children": _children()}}
    for line in sys.stdin:
        req = json.loads(line)
        res = ops[req["op"]](req)
        out.write(json.dumps(res, default=str) + "\n")
        out.flush()


def run_loader_cases(dcases, ccases, rng, timeout: float, as_nobody: bool, home: Path):
    """Every data case through load_file (raise, skip) and load_sources, every config case
    through load_config, in the worker (as nobody for mode-000 files when root can drop to it)."""
    home.mkdir()
    os.chmod(home, 0o777)
    w, wn = Worker(), (Worker(uid=NOBODY, home=str(home)) if as_nobody else None)
    root_skips = 0
    res = {"data": [], "config": []}
    silent = []
    def worker_for(c):   # mode-000 files need a user that permissions apply to (None: skip)
        return w if c["cat"] != "mode000" or os.geteuid() != 0 else wn

    for c in dcases:
        who = worker_for(c)
        if who is None:
            root_skips += 1
            continue
        for via, on_error in (("load_file", "raise"), ("load_file", "skip"), ("load_sources", rng.choice(["raise", "skip"]))):
            r = who.call({"op": "data", "path": c["path"], "on_error": on_error, "via": via, "env": c["env"]},
                         timeout=timeout)
            r.update(cat=c["cat"], path=c["path"], via=f"{via}/{on_error}")
            if via == "load_file" and on_error == "skip" and r["status"] == "accepted" and c["rows"] is not None:
                n_ex, skipped = r["result"]
                if n_ex + skipped != c["rows"]:
                    silent.append({"path": c["path"], "rows": c["rows"], "examples": n_ex, "skipped": skipped})
            res["data"].append(r)
    markers, big_reads = [], []
    for c in ccases:
        who = worker_for(c)
        if who is None:
            root_skips += 1
            continue
        r = who.call({"op": "config", **{k: c.get(k) for k in ("root", "path", "overrides", "run_dir", "names",
                                                                "trace_memory")}}, timeout=timeout)
        r.update(cat=c["cat"], root=c["root"], path=c["path"], overrides=[o[:200] for o in c["overrides"]])
        c["status"] = r["status"]            # what the CLI sample picks by (skipped cases have none)
        if c.get("marker") and Path(c["marker"]).exists():
            markers.append(c["marker"])
        if r.get("peak_mb", 0) > 64:
            big_reads.append({"path": c["path"], "peak_mb": r["peak_mb"]})
        res["config"].append(r)
    w.close()
    if wn:
        wn.close()

    return res, {"silent": silent, "markers": markers, "big_reads": big_reads, "root_skips": root_skips}


def cli_sample(dcases, ccases, rng, a, tmp: Path):
    """A sample through the real CLI: data files via ``paced eval``, configs (those the loader
    refused, or ``paced ledger`` ones) via their own command, argv bytes that are not UTF-8."""
    # ---- a sample through the CLI: data files via `paced eval`, configs via their own command
    cli_res, partial = [], []
    picked = {}
    for c in dcases:
        if c["cat"] not in picked and c["cat"] != "mode000":
            picked[c["cat"]] = c
    extra = [c for c in dcases if c not in picked.values() and c["cat"] != "mode000"]
    sample = (list(picked.values()) + rng.sample(extra, min(len(extra), a.cli_data)))[: a.cli_data]
    for i, c in enumerate(sample):
        run_dir = tmp / "cli" / f"d{i}"
        r = cli(["eval", "--config", SMOKE / "eval.yaml", f'data.eval=[{{"source": "{c["path"]}"}}]',
                 "run.threads=1", "--run-dir", run_dir], timeout=a.cli_timeout)
        cli_res.append({"kind": "data", "cat": c["cat"], "status": cli_outcome(r, "eval"), "rc": r["rc"],
                        "stderr": r["stderr"][-400:], "path": c["path"]})
        partial += [f"{run_dir}/{x}" for x in leftovers(run_dir)]
    by_status = {}
    for c in ccases:   # a config the loader accepted would run its whole command: only ledger ones
        argv_ok = "\x00" not in (c.get("run_dir") or "") and all(len(o) < 100_000 for o in c["overrides"])
        if argv_ok and c.get("status") and c["cat"] != "mode000" and (c["status"] != "accepted" or c["cmd"] == "ledger"):
            by_status.setdefault((c["cat"], c["status"]), []).append(c)
    pool = [v[0] for v in by_status.values()] + rng.sample([c for v in by_status.values() for c in v[1:]],
                                                           min(a.cli_config, sum(len(v) - 1 for v in by_status.values())))
    bytes_cases = [[b"eval.n=\xed\xa0\x80"], [b"\xff\xfe=1"]] + ([] if a.quick else [[b"--run-dir", b"\xff\xfe"]])
    for i, c in enumerate(pool[: a.cli_config] + [None] * len(bytes_cases)):
        run_dir = tmp / "cli" / f"c{i}"
        if c is None:    # argv bytes that are not UTF-8 (Python reads them as lone surrogates)
            extra = bytes_cases.pop(0)
            if extra[0] == b"--run-dir":
                run_dir = run_dir / "\udcff\udcfe"
                extra = []
            cmd, argv = "eval", ["eval", "--config", SMOKE / "eval.yaml", *extra, "--run-dir", run_dir]
        else:
            cmd = c["cmd"]
            argv = [cmd, "--config", c["path"], *c["overrides"], "--run-dir", c["run_dir"] if c.get("run_dir") is not None
                    else run_dir]
        r = cli(argv, timeout=a.cli_timeout)
        cli_res.append({"kind": "config", "cat": c["cat"] if c else "argv_bytes", "status": cli_outcome(r, cmd),
                        "rc": r["rc"], "stderr": r["stderr"][-400:],
                        "args": [str(x)[:120] for x in argv]})
        partial += [f"{run_dir}/{x}" for x in leftovers(run_dir)]

    return cli_res, partial


# ============================================================================ hostile data files
GOOD = {"prompt": "1+1=", "answer": "2", "solution": "2"}


def _jl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def data_cases(rng, n: int, tmp: Path) -> list[dict]:
    """``n`` hostile data files under ``tmp`` (seeded): dicts with path, category, rows (the
    non-blank lines written, when known: skip mode must account for each), env, chmod."""
    import struct
    tmp.mkdir(parents=True, exist_ok=True)
    good = lambda i: {"prompt": f"{i}+1=", "answer": str(i + 1), "id": f"g{i}"}  # noqa: E731
    bad_values = [None, 3, -1.5, True, [], ["a"], {}, {"x": 1}, "", "  ", "\t\n", 1e308, float("inf")]
    fields = ["prompt", "question", "problem", "answer", "final_answer", "hint", "solution", "id",
              "verifier", "difficulty", "meta", "source", "answer_format", "answer_regex"]

    def malformed():
        line = json.dumps({"prompt": "2+2=", "answer": "4", "hint": "add"})
        k = rng.randrange(7)
        if k == 0:
            return line[: rng.randrange(1, len(line) - 1)].encode()
        if k == 1:
            i = rng.randrange(len(line))
            return (line[:i] + rng.choice(["'", "\\", "{", "]", ",", ":", '"', "\x01"]) + line[i:]).encode()
        return [b'{"prompt": "a", "answer": "b",}', b"{prompt: 'a', answer: 'b'}", b'{"prompt": "a" "answer": "b"}',
                b'{"prompt": "a", "answer": NaN', b"\x00" * 8, b'{"prompt": "\x07\x00", "answer": "1"}'][k - 2]

    def one(cat: str) -> tuple[bytes | None, int | None, dict]:
        """(file bytes, non-blank rows, extra) of one case of ``cat``."""
        ok = [good(i) for i in range(rng.randrange(0, 4))]
        pos = rng.randrange(len(ok) + 1)

        def with_bad(bad):
            rows = ok[:pos] + [bad] + ok[pos:]
            return _jl(*rows), len(rows), {}
        if cat == "malformed_json":
            return with_bad(malformed())
        if cat == "non_object":
            return with_bad(rng.choice([b"[1, 2]", b'"text"', b"3", b"null", b"true", b"[]", b"[{}]"]))
        if cat == "missing_field":
            row = dict(GOOD)
            for f in rng.sample(["prompt", "answer"], rng.randrange(1, 3)):
                row.pop(f)
            row[rng.choice(["Prompt", "q", "ans", "input"])] = "x"
            return with_bad(row)
        if cat == "wrong_type":
            if rng.random() < 0.2:
                row = dict(GOOD, answer_format="regex", answer_regex=rng.choice(BAD_REGEX))
            else:
                row = dict(GOOD, **{rng.choice(fields): rng.choice(bad_values + ["nope", "(", "[a-"])})
            return with_bad(row)
        if cat == "surrogate":
            f = rng.choice(["prompt", "answer", "hint", "solution", "id"])
            s = rng.choice(["\\ud800", "\\udfff", "x\\ud83d", "\\udc00y", "\\ud83d\\ude00"])  # last: a valid pair
            return with_bad(f'{{"prompt": "p", "answer": "1", "{f}": "{s}"}}'.encode())
        if cat == "nul_bytes":
            return with_bad(rng.choice([b'{"prompt": "a\x00b", "answer": "1"}', b'{"prompt": "a\\u0000b", "answer": "1"}',
                                        b"\x00" + json.dumps(GOOD).encode(), b'{"prompt"\x00: "a", "answer": "1"}']))
        if cat == "huge_line":
            size = rng.choice([4097, 10_000, 300_000])
            data = json.dumps(dict(GOOD, prompt="y" * size)).encode()
            rows = ok[:pos] + [data] + ok[pos:]
            return _jl(*rows), len(rows), {"env": {"PACED_MAX_LINE_BYTES": "4096"}}
        if cat == "huge_text":
            rows = ok[:pos] + [dict(GOOD, **{rng.choice(["prompt", "answer", "hint", "solution"]): "z" * 1001})] + ok[pos:]
            return _jl(*rows), len(rows), {"env": {"PACED_MAX_TEXT_CHARS": "1000"}}
        if cat == "huge_number":
            v = rng.choice([b"1" + b"0" * 5000, b"1e999", b"-1e999", b"1e-999", b"123456789012345678901234567890"])
            return with_bad(b'{"prompt": "p", "answer": ' + v + b"}")
        if cat == "deep_nesting":
            d = rng.choice([100, 5000, 200_000])
            return with_bad(b'{"prompt": "p", "answer": "1", "meta": ' + b"[" * d + b"]" * d + b"}")
        if cat == "duplicate_id":
            return with_bad(dict(GOOD, id="g0" if ok else "dup")) if ok else (_jl(dict(GOOD, id="d"), dict(GOOD, id="d")), 2, {})
        if cat == "latin1":
            return ("\n".join(json.dumps({"prompt": f"café {i}=", "answer": "1"}, ensure_ascii=False)
                              for i in range(rng.randrange(1, 4))) + "\n").encode("latin-1"), None, {}
        if cat == "utf16":
            return _jl(GOOD, good(1)).decode().encode(rng.choice(["utf-16", "utf-16-be", "utf-32"])), None, {}
        if cat == "bom":  # accepted: a UTF-8 byte-order mark on line 1
            return b"\xef\xbb\xbf" + _jl(GOOD), 1, {}
        if cat == "binary":
            return rng.randbytes(rng.choice([1, 100, 4096, 70_000])), None, {}
        if cat == "blank_and_crlf":  # accepted
            body = b"\r\n".join(json.dumps(good(i)).encode() for i in range(3)) + b"\r\n\r\n   \n\t\n"
            return body, 3, {}
        if cat == "parquet_garbage":
            k = rng.randrange(4)
            if k == 0:
                return rng.randbytes(rng.randrange(1, 5000)), None, {"suffix": ".parquet"}
            if k == 1:
                return b"PAR1" + rng.randbytes(rng.randrange(0, 3000)) + b"PAR1", None, {"suffix": ".parquet"}
            if k == 2:
                return b"PAR1" + rng.randbytes(64) + struct.pack("<i", rng.randrange(2 ** 31)) + b"PAR1", None, \
                    {"suffix": ".parquet"}
            return None, None, {"suffix": ".parquet", "parquet": rng.choice(["truncated", "int_prompt", "nested", "ok"])}
        if cat == "mode000":
            return _jl(GOOD), 1, {"chmod": 0o000}
        if cat == "path_kind":
            return None, None, {"kind": rng.choice(["dir", "missing", "fifo", "devzero", "loop", "suffix"])}
        if cat == "valid":
            rows = [good(i) for i in range(rng.randrange(1, 6))]
            return _jl(*rows), len(rows), {}
        raise KeyError(cat)

    cats = ["malformed_json", "non_object", "missing_field", "wrong_type", "surrogate", "nul_bytes",
            "huge_line", "huge_text", "huge_number", "deep_nesting", "duplicate_id", "latin1", "utf16",
            "bom", "binary", "blank_and_crlf", "parquet_garbage", "mode000", "path_kind", "valid"]
    cases = []
    for i in range(n):
        cat = cats[i % len(cats)] if i < 2 * len(cats) else rng.choice(cats)
        data, rows, extra = one(cat)
        path = tmp / f"case{i:05d}{extra.get('suffix', rng.choice(['.jsonl', '.jsonl', '.json']))}"
        kind = extra.get("kind")
        if kind == "dir":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "devzero":
            path.symlink_to("/dev/zero")
        elif kind == "loop":
            path.symlink_to(path.with_name(path.name + ".b.jsonl"))
            path.with_name(path.name + ".b.jsonl").symlink_to(path)
        elif kind == "suffix":
            path = path.with_suffix(rng.choice([".txt", ".csv", ".yaml", ""]))
            path.write_bytes(_jl(GOOD))
        elif "parquet" in extra:
            rows = _write_parquet(path, extra["parquet"])
        elif data is not None:
            path.write_bytes(data)
        if "chmod" in extra:
            os.chmod(path, extra["chmod"])
        cases.append({"cat": cat, "path": str(path), "rows": rows, "env": extra.get("env", {})})
    return cases


def _write_parquet(path: Path, how: str) -> int | None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    if how == "int_prompt":
        pq.write_table(pa.table({"prompt": [1, 2], "answer": ["1", "2"]}), path)
        return 2
    if how == "nested":
        pq.write_table(pa.table({"prompt": [["a"], ["b"]], "answer": [{"x": 1}, {"x": 2}]}), path)
        return 2
    pq.write_table(pa.table({"prompt": [f"{i}+1=" for i in range(50)], "answer": [str(i + 1) for i in range(50)]}),
                   path)
    if how == "truncated":
        b = path.read_bytes()
        path.write_bytes(b[: len(b) // 2] + b[-8:])   # footer kept: the pages are what is missing
        return None
    return 50


# ============================================================================ hostile configs
HOSTILE_VALUES = [
    "abc", "[1, 2]", "{a: 1}", "true", "null", "3.5", "-7", "''", "[[[]]]", "0x1F", "1e400", ".inf", "-.inf",
    ".nan", "2001-01-01", "!!binary aGVsbG8=", "~", '"\\ud800"', '"\\x00"', "10000000000000000000000", "-1",
    "0", "9" * 5000, "1" + "0" * 400, "-1" + "0" * 400, "!!set {a, b}", "!!omap [a: 1]", "*undefined",
    "[" * 100, "{" * 100, "a: b: c", "- 1", "? a", "|", "%YAML 1.2", "---", "@", "`", "!!float abc",
    "!!int 1.5", "!!str 3", "2:30", "0o17", "+12", "1_000", "0b101", "Yes", "off", '"', "[1, 2", "#c", " ",
    "'" + "x" * 100_000 + "'", "[" + ", ".join(["1"] * 5000) + "]", "{source: add, n: 3}", "[{source: add, n: -1}]",
    "[{source: add, n: 1000000000}]", "[{source: /nonexistent.jsonl}]", "[{}]", "[5]", "4e-3", "1e-400",
]
VALID = {"SFTConfig": ["optim.lr=1e-4", "train.max_steps=3", "run.seed=5", "run.save_steps=1"],
         "EvalConfig": ["eval.n=2", "eval.ks=[1, 2]", "sampling.temperature=0.5", "run.seed=2"],
         "RLConfig": ["rl.max_steps=2", "rl.advantage=grpo", "optim.lr=1e-4"],
         "DistillConfig": ["distill.eval_n=1", "optim.lr=3e-4"], "LedgerConfig": ["bins=3"],
         "PassrateConfig": ["passrate.num_generations=2"], "ContinualConfig": ["continual.epochs=1"],
         "DemoConfig": ["demo.teacher_steps=2"], "SNRConfig": ["snr.bins=3"]}


BAD_REGEX = ["(" * 5000 + ")" * 5000, "a{99999999999999}", "(?P<a>x)(?P<a>y)", "\\", "[", "(?<=a+)b", "*", "x" * 100_000]


def _bomb(rng) -> str:
    w, d = rng.randint(5, 12), rng.randint(4, 9)
    lines = [f"a0: &a0 [{', '.join(['x'] * w)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * w)}]" for i in range(1, d)]
    return "\n".join(lines) + "\n"


def config_cases(rng, n: int, tmp: Path) -> list[dict]:
    """``n`` hostile configs / overrides (seeded): dicts with root, path, overrides, run_dir, the
    names a clear message should mention, and the category."""
    from paced import config as C
    tmp.mkdir(parents=True, exist_ok=True)
    roots = list(ROOTS)
    cats = ["wrong_type", "unknown_key", "deep_nesting", "alias_bomb", "huge_int", "huge_size", "bad_encoding",
            "path_kind", "top_level", "yaml_tag", "section_type", "run_dir", "regex", "valid"]
    sizes = ["sampling.batch_size", "eval.n", "rl.eval_n", "sampling.max_completion_length", "train.max_length",
             "train.per_device_train_batch_size", "rl.num_generations", "rl.per_device_train_batch_size",
             "distill.per_device_train_batch_size", "passrate.num_generations", "rl.gradient_accumulation_steps",
             "run.threads", "distill.eval_n", "rl.max_sampling_rounds", "continual.hidden",
             "continual.batch_size", "bins", "distill.chunk_size", "train.gradient_accumulation_steps"]
    out = []
    for i in range(n):
        cat = cats[i % len(cats)] if i < 3 * len(cats) else rng.choice(cats)
        root = rng.choice(roots)
        cmd, base = ROOTS[root]
        keys = C.all_keys(getattr(C, root))
        case = {"cat": cat, "root": root, "cmd": cmd, "path": str(base), "overrides": [], "names": []}
        f = tmp / f"cfg{i:05d}.yaml"

        def file_case(body: bytes | str):
            f.write_bytes(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body)
            case.update(path=str(f), names=[f.name])

        def override(key: str, value: str):
            case["overrides"].append(f"{key}={value}")
            case["names"].append(key.strip())
        if cat == "wrong_type":
            override(rng.choice(keys), rng.choice(HOSTILE_VALUES))
        elif cat == "unknown_key":
            k = rng.choice(keys)
            j = rng.randrange(len(k))
            k = rng.choice([k[:j] + k[j + 1:], k[:j] + rng.choice("xq_.") + k[j:], k + ".x", "x." + k,
                            k.replace(".", ".."), "." + k, k + ".", k.replace("o", "\u043e"), " " + k + " ",
                            "y" * rng.choice([10, 10_000, 1_000_000]), "data.train.0.source"])
            override(k, "1")
        elif cat == "deep_nesting":
            d = rng.choice([63, 65, 1000, 100_000])
            how = rng.randrange(3)
            if how == 0:
                override(rng.choice(keys), "[" * d + "]" * d)
            elif how == 1:
                file_case("run:\n" + "".join("  " * (j + 1) + f"k{j}:\n" for j in range(min(d, 1500))) + "  " * 1501 + "v: 1\n")
            else:
                file_case("run: " + "{a: " * d + "1" + "}" * d + "\n")
        elif cat == "alias_bomb":
            if rng.random() < 0.5:
                file_case(_bomb(rng) + "run: {seed: 1}\n")
            else:
                override(rng.choice(keys), "{" + ", ".join(_bomb(rng).splitlines()) + "}")
        elif cat == "huge_int":
            digits = rng.choice([19, 20, 309, 400, 4300, 4301, 100_000])
            override(rng.choice(keys), rng.choice(["", "-"]) + "9" * digits)
        elif cat == "huge_size":
            override(rng.choice(sizes), str(rng.choice([10 ** 6, 10 ** 9, 10 ** 12, 2 ** 63, 10 ** 30])))
        elif cat == "bad_encoding":
            text = "# caf\u00e9 \u2603\nrun: {seed: 1}\n"
            k = rng.randrange(7)
            body = [text.encode("latin-1", "replace"), text.encode("utf-16"), text.encode("utf-32"),
                    rng.randbytes(rng.randrange(1, 3000)), b"run: {seed: 1}\x00\n", b"run: {dir: '\xed\xa0\x80'}\n",
                    b"\xef\xbb\xbf" + text.encode()][k]
            file_case(body)
        elif cat == "path_kind":
            kind = rng.choice(["dir", "missing", "fifo", "devzero", "mode000", "huge_sparse", "too_long"])
            case["names"] = [f.name]
            case["path"] = str(f)
            if kind == "dir":
                f.mkdir()
            elif kind == "fifo":
                os.mkfifo(f)
            elif kind == "devzero":
                f.symlink_to("/dev/zero")
            elif kind == "mode000":
                f.write_text("run: {seed: 1}\n")
                os.chmod(f, 0)
                case["cat"] = "mode000"
            elif kind == "huge_sparse":
                with open(f, "wb") as fh:
                    fh.truncate(256 * 2 ** 20)       # 256 MiB of NUL bytes, no disk used
                case["trace_memory"] = True
            elif kind == "too_long":
                f.write_text("# " + "x" * (4 * 2 ** 20) + "\nrun: {seed: 1}\n")
        elif cat == "top_level":
            file_case(rng.choice(["[1, 2]", "42", "just text", "", "# only a comment\n", "---\na: 1\n---\nb: 2\n",
                                  "optim: [1]\n", "optim:\n", "run: {seed: 1}\nrun: {seed: 2}\n", "null\n", "~\n"]))
        elif cat == "yaml_tag":
            marker = tmp / f"MARKER-{i}"
            case["marker"] = str(marker)
            tag = rng.choice([f"!!python/object/apply:os.system ['touch {marker}']",
                              f"!!python/object/new:os.system ['touch {marker}']",
                              "!!python/name:os.system", "!!binary aGk=", "!!timestamp 2001-12-14", "!!set {a}",
                              "!custom x"])
            if rng.random() < 0.5:
                file_case(f"run: {{dir: {tag}}}\n")
            else:
                override(rng.choice(keys), tag)
        elif cat == "section_type":
            sec = rng.choice(sorted({k.split(".")[0] for k in keys}))
            override(sec, rng.choice(["3", "[1]", "abc", "null", "[{source: add}]", "{}"]))
        elif cat == "run_dir":   # all under tmp (or /dev/null): a hostile run dir must never land in the repo
            afile = tmp / "a-file"
            afile.write_text("keep me")
            case["run_dir"] = rng.choice([str(afile), str(afile / "sub"), "\x00", str(tmp / ("x" * 5000)),
                                          "/dev/null", str(tmp / "new" / "\udcff")])
            case["names"] = []
        elif cat == "regex":
            sec = "data.eval" if root in ("EvalConfig",) else "data.train"
            if sec in keys:
                override(sec, json.dumps([{"source": "add", "n": 2, "answer_format": "regex",
                                           "answer_regex": rng.choice(BAD_REGEX)}]))
            else:
                override(rng.choice(keys), json.dumps(rng.choice(BAD_REGEX)))
        elif cat == "valid":
            case["overrides"] = [rng.choice(VALID[root])]
        out.append(case)
    return out


# ============================================================================ hostile answers
PIECES = ["\\boxed{", "}", "{", "\\frac{", "\\sqrt{", "^", "9", "1e308", "\\left(", "\\right)", "=", "####",
          "The answer is ", "\\text{", "$", "\\\\", "x", "+", "-", "*", "/", "!", "\ud800", "\x00", "\u0663", "\uff11",
          "\u200b", "\u03c0", "\\pi", "\\infty", " ", "\n", "(", ")", "[", "]", ",", ".", "%", "\\%", "&",
          "\\begin{matrix}", "\\end{matrix}", "\\cdot", "\\times", "10^{", "e", "E", "I", "answer: ", "\\fbox{",
          "**", "\\dfrac", "\\int", "_", "\u00b3", "\u2460", "\U0001f600", "\u202e", "\ufeff", "0", "1", "2", "3.5",
          "-", "1/0", "\\ln", "\\log", "\\sum_{i=1}^{n}", "\\binom{", "|", "\\mid", ";", "\\%", "\t"]


def answer_strings(seed: int, n: int) -> list[tuple[str, str]]:
    """(category, string): hand-made hostile answers first, then seeded random mixes, ``n`` in all."""
    import random
    rng = random.Random(seed)
    nest = lambda o, c, k, mid="1": o * k + mid + c * k  # noqa: E731
    fixed = [("huge_number", s) for s in [
        "1e308", "1E999999", "9^9^9^9", "9**9**9**9", "10^{10^{10^{10}}}", "\\boxed{10^{10^{10^{10}}}}", "2^{100000}",
        "2^{99999}", "2^{100001}", "(10^100)!", "1000!", "1001!", "9" * 4301, "9" * 100_000, "1/0", "0/0",
        "\\frac{1}{0}", "-0", "1e-999999", "inf", "nan", "\\infty", "10^{10^{10}}", "x^{10^{10}}", "e^{e^{e^{e}}}",
        "\\boxed{9^{9^{9^{9}}}}", "99999999999999999999!", "1e1000000000", "10**10**10", "2^2^2^2^2^2^2^2",
        "\\sqrt{10^{100000}}", "\\frac{10^{10^{10}}}{3}", "(2^{30})^{2^{30}}", "1.0e+308", "1.8e308", "4.9e-324"]]
    fixed += [("deep_braces", nest(o, c, k)) for o, c in [("{", "}"), ("(", ")"), ("[", "]"), ("\\boxed{", "}"),
                                                          ("\\frac{1}{", "}"), ("\\sqrt{", "}"), ("\\left(", "\\right)")]
              for k in (49, 50, 51, 1000, 100_000)]
    fixed += [("megabyte", s) for s in ["1" * 2 ** 20, "a " * 2 ** 19, "=" * 2 ** 20, "####" * 2 ** 18,
                                        "The answer is " * 75_000, "\\boxed{1}" * 116_000, "{" * 2 ** 20,
                                        "\\boxed{" * 150_000, "1+" * 2 ** 19 + "1", "-" * 2 ** 20, "\n" * 2 ** 20,
                                        "\ud800" * 2 ** 20, "\\frac{1}{2}" * 95_000]]
    fixed += [("unbalanced_boxed", s) for s in ["\\boxed{", "\\boxed{1", "\\boxed{\\boxed{2}", "\\boxed{}", "\\fbox{2",
                                                "}}}}\\boxed{3}", "\\boxed{{{{4}", "\\boxed 5", "\\boxed{1}}}}}",
                                                "\\boxed{\\}", "\\boxed{\\\\}", "\\boxed{1}\\boxed{", "\\boxed  {7}"]]
    fixed += [("latex_junk", s) for s in [
        "\\begin{matrix}1&2\\\\3&4\\end{matrix}", "\\int_0^\\infty e^{-x^2}dx", "\\sum_{i=1}^{10^{10}} i",
        "\\left(\\right)", "$$$$", "\\text{" * 1000, "\\\\\\\\", "\\frac{\\frac{1}{2}}{\\frac{3}{4}}", "x^2+4x+4",
        "(x+2)^2", "\\sqrt[3]{27}", "\\lim_{x\\to0}\\frac{\\sin x}{x}", "\\mathbb{R}", "\\{1,2\\}", "\\emptyset",
        "a=b=c=d", "\\overline{abc}", "1,000,000", "\\$5", "50\\%", "\\dfrac{1}{3}", "\\tfrac12", "\\frac12"]]
    fixed += [("unicode", s) for s in ["\u0663", "\u00b3", "\u2460", "\u200b1", "\u202e42", "\U0001f600", "e\u0301",
                                       "\ud800", "\udfff1", "\x00", "\ufeff7", "\uff11\uff12", "\u2212 5", "\u00bd",
                                       "\u221e", "\u00b1", "\u0000\u0000", "\u4e00", "\ud83d\ude00" * 1000]]
    fixed += [("frac_nest", nest("\\frac{1}{", "}", k)) for k in (5, 30, 49, 50, 51, 200, 5000)]
    fixed += [("long_sum", s) for k in (10, 100, 1000, 10_000) for s in
              ("+".join(["1"] * k), "+".join(["x"] * k), "+".join(f"x^{j}" for j in range(k)),
               "*".join(["(x+1)"] * k), "".join(f"(x+{j})" for j in range(min(k, 30))))]
    fixed += [("guard_edge", s) for s in [
        "(x+1)^{30}", "(x+1)^30*(x+2)^30*(x+3)^30", "x^{100000}", "x^{100001}", "2^{1000}", "3^{3^{3}}",
        "\\sqrt{2}^{\\sqrt{2}^{\\sqrt{2}}}", "(" * 50 + "x" + ")" * 50, "+".join(f"x^{{{j}}}" for j in range(30)),
        "x" * 1000, "x" * 1001, "\\frac{" + "x+" * 300 + "1}{" + "y+" * 180 + "1}", "1000!", "sin(x)^2+cos(x)^2",
        "\\prod_{k=1}^{100} k", "\\binom{1000}{500}", "2^{2^{10}}", "10^{-100000}"]]
    out = fixed[:n] if n >= len(fixed) else rng.sample(fixed, n)
    while len(out) < n:
        k = rng.choice([1, 3, 10, 30, 100, 400])
        s = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, k)))
        if rng.random() < 0.05:
            s = s * rng.choice([100, 2000])
        out.append(("random_mix", s))
    return out


def verifier_examples():
    """Examples of every verifier (countdown from paced.tasks.synthetic), every answer format."""
    from paced.tasks.base import Example
    from paced.tasks.synthetic import generate
    exs = [Example(id="e1", prompt="1+1=", answer="2", verifier="exact"),
           Example(id="e2", prompt="q", answer="42", verifier="exact", answer_format="boxed"),
           Example(id="n1", prompt="q", answer="-3.5", verifier="numeric"),
           Example(id="n2", prompt="q", answer="1/3", verifier="numeric", answer_format="last_number"),
           Example(id="m1", prompt="q", answer="\\frac{1}{2}", verifier="math"),
           Example(id="m2", prompt="q", answer="x^2+2x+1", verifier="math", answer_format="boxed"),
           Example(id="m3", prompt="q", answer="\\sqrt{2}", verifier="math", answer_format="gsm8k"),
           Example(id="m4", prompt="q", answer="yes", verifier="math", answer_format="answer_is"),
           Example(id="m5", prompt="q", answer="7", verifier="math", answer_format="regex",
                   answer_regex=r"ANSWER:\s*(\S+)")]
    return exs + generate("countdown", 2, seed=0, difficulty=(2, 3))


# ============================================================================ run directories
TMP_MARKS = (".tmp", "tmp-", ".del-")


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files a writer left (``.tmp-step-N``, ``.init.tmp-PID``, ``.x.tmpPID``, ...),
    and result files that do not parse: what a half-finished write leaves behind."""
    import yaml
    bad = []
    if not run_dir.is_dir():
        return bad
    for p in run_dir.rglob("*"):
        rel = str(p.relative_to(run_dir))
        if any(m in p.name for m in TMP_MARKS):
            bad.append(rel)
            continue
        if not p.is_file() or p.is_symlink():
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".jsonl":
                [json.loads(x) for x in p.read_text().splitlines()]
            elif p.suffix == ".yaml":
                yaml.safe_load(p.read_text())
            elif p.suffix == ".safetensors":
                from safetensors.torch import load_file
                load_file(p)
        except Exception as e:  # noqa: BLE001
            bad.append(f"{rel} ({type(e).__name__})")
    return bad


def checkpoint_complete(path: Path) -> bool:
    """An independent check (not paced's): every part of a checkpoint reads in full."""
    import torch
    from safetensors.torch import load_file
    try:
        state = json.loads((path / "state.json").read_text())
        load_file(path / "model.safetensors")
        torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
        json.loads((path / "config.json").read_text())
        return isinstance(state.get("step"), int)
    except Exception:  # noqa: BLE001
        return False


def weights_equal(a: Path, b: Path) -> bool:
    """Same tensor names, dtypes, shapes and bytes."""
    from safetensors.torch import load_file
    try:
        x, y = load_file(a), load_file(b)
    except Exception:  # noqa: BLE001
        return False
    return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and
                                        x[k].contiguous().view(-1).view(__import__("torch").uint8).equal(
                                            y[k].contiguous().view(-1).view(__import__("torch").uint8))
                                        for k in x)


def ledger_rows(path: Path) -> Counter:
    """(problem_id, trials, successes, stage, step) of every row (the model tag names the run
    directory, and time differs: both left out)."""
    import sqlite3
    if not path.exists():
        return Counter()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return Counter(db.execute("SELECT problem_id, trials, successes, stage, step FROM trials"))
    finally:
        db.close()


def cli(args: list, timeout: float, run_as: int | None = None, home: str | None = None) -> dict:
    """``python -m paced ARGS`` in a fresh process group: rc, stderr, secs; rc None on a hang."""
    env = dict(ENV, HOME=home or os.environ.get("HOME", "/tmp"))
    pre = None
    if run_as is not None:
        def pre():
            os.setgid(run_as)
            os.setgroups([])
            os.setuid(run_as)
    t0 = time.perf_counter()
    p = subprocess.Popen([PY, "-m", "paced", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, preexec_fn=pre)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rc = None
    return {"rc": rc, "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace"),
            "secs": time.perf_counter() - t0}


def cli_outcome(r: dict, cmd: str) -> str:
    """accepted (rc 0) / clear (rc 2, exactly one stderr line 'paced <cmd>: ...') / hang /
    traceback ('Traceback' on stderr) / unclear (any other exit)."""
    if r["rc"] is None:
        return "hang"
    if "Traceback" in r["stderr"]:
        return "traceback"
    if r["rc"] == 0:
        return "accepted"
    lines = [x for x in r["stderr"].splitlines() if x.strip()]
    return "clear" if r["rc"] == 2 and len(lines) == 1 and lines[0].startswith(f"paced {cmd}:") else "unclear"


# ============================================================================ kills and damage
def start(args: list, log: Path) -> subprocess.Popen:
    """``python -m paced ARGS`` in the background, stderr to ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen([PY, "-m", "paced", *map(str, args)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=f, start_new_session=True)


def _rows_now(db: Path) -> int:
    import sqlite3
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return c.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return 0


def kill_at(proc: subprocess.Popen, run_dir: Path, mode: str, rng, ref_secs: float, steps: int,
            after: int = 0, estimate_rows: int = 0) -> dict:
    """SIGKILL ``proc`` at a seeded moment of ``mode``: "checkpoint write" (while
    ``.tmp-step-k`` exists), "after checkpoint" (0-0.3 s after ``step-k`` appears), "random
    time" (a share of the reference run's wall time), "pass-rate estimate" (ledger rows part-way
    through an estimate). Returns what happened; killed False when the run ended first."""
    ck = run_dir / "checkpoints"
    k = rng.randint(after + 1, max(after + 1, steps - 1))
    t0 = time.time()
    deadline = t0 + (rng.uniform(0.25, 1.0) * ref_secs if mode == "random time" else 600)
    want = rng.randrange(1, max(2, estimate_rows)) if estimate_rows else 0
    info = {"mode": mode, "step": k}
    while proc.poll() is None and time.time() < deadline:
        if mode == "checkpoint write" and (ck / f".tmp-step-{k}").exists():
            time.sleep(rng.uniform(0, 0.004))
            break
        if mode in ("checkpoint write", "after checkpoint") and (ck / f"step-{k}").exists():
            info["missed_window"] = mode == "checkpoint write"
            time.sleep(rng.uniform(0, 0.3) if mode == "after checkpoint" else 0)
            break
        if mode == "pass-rate estimate":
            n = _rows_now(run_dir / "ledger.sqlite")
            if n >= want and n % (estimate_rows // 2) != 0:
                info["ledger_rows"] = n
                break
        time.sleep(0.001 if mode == "checkpoint write" else 0.005)
    if proc.poll() is not None:
        return {**info, "killed": False}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    info["secs"] = round(time.time() - t0, 2)
    info["killed"] = True
    info["tmp_dirs"] = sorted(p.name for p in ck.glob(".tmp-step-*")) if ck.is_dir() else []
    return info


def snapshot(run_dir: Path) -> dict[str, bool]:
    """{checkpoint dir: complete?} by the independent check, as the run left them."""
    ck = run_dir / "checkpoints"
    return {str(p): checkpoint_complete(p) for p in sorted(ck.glob("step-*"))} if ck.is_dir() else {}


EVIL = """
import os, pickle, sys
class Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, ("touch " + self.marker,))
"""


def evil_pickle(marker: Path) -> bytes:
    """Pickle bytes whose unpickling creates ``marker`` (checked to work by ``pickle_works``)."""
    ns: dict = {}
    exec(EVIL, ns)
    import pickle
    return pickle.dumps(ns["Evil"](str(marker)))


def evil_torch_file(path: Path, marker: Path) -> None:
    """A ``torch.save`` zip (what trainer_state.pt is) holding the payload (saving runs nothing)."""
    import torch
    ns: dict = {}
    exec(EVIL, ns)
    torch.save({"optimizer": ns["Evil"](str(marker)), "scheduler": None, "rng": None}, path)


def pickle_works(tmp: Path) -> bool:
    """The payloads are live: plain ``pickle.loads`` / ``torch.load(weights_only=False)`` run them."""
    m1, m2, f = tmp / "SANITY-1", tmp / "SANITY-2", tmp / "sanity.pt"
    f1 = tmp / "sanity.pkl"
    f1.write_bytes(evil_pickle(m1))
    evil_torch_file(f, m2)
    import pickle

    import torch
    pickle.loads(f1.read_bytes())            # both only touch a marker file
    torch.load(f, weights_only=False)
    return m1.exists() and m2.exists()


def flip(path: Path, where: str, rng) -> None:
    """Flip bytes of ``path``: in the safetensors JSON header, in its tensor data, or mid-file."""
    import struct
    b = bytearray(path.read_bytes())
    if where == "header":
        n = struct.unpack("<Q", b[:8])[0]
        i = rng.randrange(8, 8 + n)
    elif where == "data":
        n = struct.unpack("<Q", b[:8])[0]
        i = rng.randrange(8 + n, len(b) - 1)
    else:
        i = rng.randrange(len(b) // 4, 3 * len(b) // 4)
    b[i] ^= 0xFF
    b[i + 1] ^= 0x5A
    path.write_bytes(bytes(b))


def file_hashes(d: Path) -> dict[str, str]:
    import hashlib
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


def read_only(d: Path, on: bool = True) -> str | None:
    """Make ``d`` and everything in it read-only (chmod 555/444; as root also ``chattr +i``,
    since root ignores mode bits); returns how, or None when writes still succeed. ``on=False``
    undoes it."""
    if not on:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-R", "-i", str(d)], capture_output=True)
        for p in [d, *d.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        return None
    for p in [*d.rglob("*"), d]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    how = "chmod 555"
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "-R", "+i", str(d)], capture_output=True).returncode != 0:
            return None
        how = "chmod 555 + chattr +i (root)"
    try:
        (d / ".probe").touch()
    except OSError:
        return how
    (d / ".probe").unlink()
    read_only(d, False)
    return None


LEDGER_WRITER = """
import os, sys, time
from paced.ledger import Ledger
path, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.0005)
led = Ledger(path)
for i in range(n):
    if tag.startswith("reader"):
        led.counts(stage="s")
    else:
        led.record({f"{tag}-{i}-{j}": (j % 2, 2) for j in range(3)}, model=tag, stage="s", step=i)
"""


STAGES = ("[{name: fkl, loss_type: forward_kl, max_steps: 3, weighting: beta, reestimate_every: 2}, "
          "{name: rkl, loss_type: reverse_kl, max_steps: 3, weighting: uniform}]")


def crash_commands(half: Path) -> dict:
    """The three trainers, checkpointing every step (the smoke configs, made a little longer)."""
    return {
        "sft": (["sft", "--config", SMOKE / "sft.yaml", "run.threads=1", "train.max_steps=12", "run.save_steps=1",
                 "run.save_total_limit=3"], 12, 0),
        "distill": (["distill", "--config", SMOKE / "distill.yaml", "run.threads=1", f"student.path={half}",
                     "student.preset=null", "data.train=[{source: add, n: 24, difficulty: 1}]", "data.eval=[]",
                     "data.forgetting=[]", f"distill.stages={STAGES}", "sampling.batch_size=16",
                     "run.save_steps=1", "run.save_total_limit=0"], 6, 48),
        "rl": (["rl", "--config", SMOKE / "rl.yaml", "run.threads=1", f"policy.path={half}", "policy.preset=null",
                "data.train=[{source: add, n: 32, difficulty: 1}]", "data.eval=[]", "rl.max_steps=6",
                "run.save_steps=1", "run.save_total_limit=2"], 6, 0)}


RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


def crash_trial(cmd, args, steps, est_rows, ref: Path, ref_secs: float, run_dir: Path, rng, mode: str,
                kill_twice: bool = True) -> dict:
    """Kill a run at ``mode``, resume it (half the trials: kill the resume too), compare."""
    log = run_dir.with_suffix(".log")
    t = {"command": cmd, "kills": [], "resumes": []}
    for attempt in range(4):          # a run that ended before the kill is started again
        shutil.rmtree(run_dir, ignore_errors=True)
        k = kill_at(start([*args, "--run-dir", run_dir], log), run_dir, mode, rng, ref_secs, steps, 0, est_rows)
        if k["killed"]:
            break
        t.setdefault("void", 0)
        t["void"] += 1
    t["kills"].append(k)
    second = rng.random() < 0.5 and kill_twice
    while True:
        snap = snapshot(run_dir)
        t.setdefault("visible_incomplete", 0)
        t["visible_incomplete"] += sum(not ok for ok in snap.values())
        if second:   # kill the resumed run too, past the checkpoint it resumes from
            second = False
            log.write_text("")
            p = start([*args, "--run-dir", run_dir, "--resume"], log)
            after = max([int(Path(c).name[5:]) for c, ok in snap.items() if ok] + [0])
            mode2 = rng.choice(["after checkpoint", "random time", "checkpoint write"])
            k = kill_at(p, run_dir, mode2 if after < steps else "random time", rng,   # no checkpoint left to wait for
                        ref_secs, steps, after, est_rows)
            t["kills"].append(k)
            r = {"rc": p.returncode if not k["killed"] else -9, "stderr": log.read_text()}
        else:
            r = cli([*args, "--run-dir", run_dir, "--resume"], timeout=600)
        m = RESUMED.search(r["stderr"])
        t["resumes"].append({"rc": r["rc"], "from": m.group(1) if m else None,
                             "from_complete": snap.get(m.group(1), False) if m else None,
                             "skipped_damaged": r["stderr"].count("skipping damaged checkpoint"),
                             "stderr": r["stderr"][-300:] if r["rc"] not in (0, -9) else ""})
        if r["rc"] != -9:
            break
    t["rc"] = r["rc"]
    t["identical"] = r["rc"] == 0 and weights_equal(ref / "model" / "model.safetensors", run_dir / "model" / "model.safetensors")
    a, b = ledger_rows(ref / "ledger.sqlite"), ledger_rows(run_dir / "ledger.sqlite")
    t["ledger_equal"] = a == b
    t["ledger_duplicates"] = sum((_by_key(b) - _by_key(a)).values())   # a (problem, stage, step) once too often
    from paced.runlog import read_jsonl
    t["metrics_exact"] = [x.get("step") for x in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, steps + 1))
    t["half_loaded"] = sum(1 for x in t["resumes"] if x["from"] and not x["from_complete"])
    t["leftovers"] = leftovers(run_dir)
    return t


def _by_key(rows: Counter) -> Counter:
    out = Counter()
    for r, n in rows.items():
        out[(r[0], r[3], r[4])] += n
    return out


def damage_kinds(rng, marker_dir: Path) -> dict:
    """{what: damage(checkpoint dir)}: truncations, flipped bytes, a changed value, pickles."""
    return {
        "weights: header bytes flipped": lambda c: flip(c / "model.safetensors", "header", rng),
        "weights: tensor bytes flipped": lambda c: flip(c / "model.safetensors", "data", rng),
        "weights: truncated": lambda c: _truncate(c / "model.safetensors"),
        "weights: deleted": lambda c: (c / "model.safetensors").unlink(),
        "trainer_state: truncated": lambda c: _truncate(c / "trainer_state.pt"),
        "trainer_state: bytes flipped": lambda c: flip(c / "trainer_state.pt", "middle", rng),
        "trainer_state: empty": lambda c: (c / "trainer_state.pt").write_bytes(b""),
        "state.json: truncated": lambda c: _truncate(c / "state.json"),
        "state.json: step changed": lambda c: (c / "state.json").write_text((c / "state.json").read_text()
                                                                            .replace('"step": 11', '"step": 9')),
        "every checkpoint: state.json deleted": lambda c: [(x / "state.json").unlink() for x in c.parent.glob("step-*")],
        "pickle: trainer_state.pt": lambda c: evil_torch_file(c / "trainer_state.pt", marker_dir / "m-trainer"),
        "pickle: model.safetensors": lambda c: (c / "model.safetensors").write_bytes(evil_pickle(marker_dir / "m-st")),
        "pickle: state.json": lambda c: (c / "state.json").write_bytes(evil_pickle(marker_dir / "m-state")),
        "pickle: HF Trainer names beside it": lambda c: [
            (d / f).write_bytes(evil_pickle(marker_dir / f"m-{d.name}-{f}")) for d in (c, c.parent.parent / "init")
            for f in ("pytorch_model.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")]}


def _truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        worker_main()
