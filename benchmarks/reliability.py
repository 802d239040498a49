"""Reliability harness: hostile inputs, hostile answers, SIGKILL crash safety, storage damage.

    python benchmarks/reliability.py            # full (~25 min on 2 cores): the table in docs/reliability.md
    python benchmarks/reliability.py --quick    # a few hundred cases per part, one kill (~90 s)

Everything goes through paced's real code: the data loaders and ``load_config`` in a killable
worker subprocess (benchmarks/reliability_parts.py), the verifiers in paced.tasks, and the real
CLI (``python -m paced ...``) for every run that is killed, resumed or damaged. Nothing in paced
is mocked. Parts:

1. inputs    seeded hostile data files (>= 1,000) and configs / overrides (>= 500) through the
             loaders, a sample through the CLI: clear errors, accepted, tracebacks, hangs, partial files.
2. answers   hostile answer strings (>= 1,000) through every verifier: time per call, exceptions,
             leaked processes.
3. crash     sft / distill / rl killed with SIGKILL at seeded moments (some mid-checkpoint),
             resumed with --resume (some killed again): weights bit-identical to an uninterrupted
             run, ledger rows equal, no half-written checkpoint loaded.
4. storage   two processes writing one ledger; ledger files that are not SQLite; read-only run
             directories; damaged or pickle-laden checkpoints.

Results: benchmarks/results/reliability.json (``--quick``: reliability_quick.json). The exit code
is 1 when any "must be 0" count is not 0.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, write_json  # noqa: E402
from benchmarks.reliability_parts import (ENV, LEDGER_WRITER, PY, RESUMED, ROOT, SMOKE, Worker,  # noqa: E402
                                          answer_strings, can_drop_privileges, cli, cli_outcome, cli_sample,
                                          config_cases, crash_commands, crash_trial, damage_kinds, data_cases,
                                          file_hashes, ledger_rows, leftovers, pickle_works, read_only,
                                          run_loader_cases, verifier_examples, weights_equal)



class Rows:
    """The table: (part, check, value, must be 0?) rows, and the failing examples."""

    def __init__(self):
        self.rows, self.examples = [], []

    def add(self, part, check, value, zero=False, note=""):
        self.rows.append({"part": part, "check": check, "value": value, "must_be_0": zero, "note": note})

    def failed(self):
        return [r for r in self.rows if r["must_be_0"] and r["value"] != 0]

    def text(self) -> str:
        out = ["| part | check | count | must be 0 |", "|---|---|---|---|"]
        for r in self.rows:
            v = f"{r['value']:,}" if isinstance(r["value"], int) else str(r["value"])
            flag = ("yes" if r["value"] == 0 else "**NO: FAILS**") if r["must_be_0"] else ""
            out.append(f"| {r['part']} | {r['check']}{' (' + r['note'] + ')' if r['note'] else ''} | {v} | {flag} |")
        return "\n".join(out)


def tally(results: list[dict]) -> dict:
    out = {}
    for r in results:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def part_inputs(a, tmp: Path, rows: Rows, as_nobody: bool) -> dict:
    rng = random.Random(a.seed)
    dcases = data_cases(rng, a.n_data, tmp / "data")
    ccases = config_cases(rng, a.n_config, tmp / "cfg")
    res, found = run_loader_cases(dcases, ccases, rng, a.case_timeout, as_nobody, tmp / "home")
    silent, markers, big_reads, root_skips = (found[k] for k in ("silent", "markers", "big_reads", "root_skips"))
    cli_res, partial = cli_sample(dcases, ccases, rng, a, tmp)

    P = "1 inputs"
    d, cf, cl = tally(res["data"]), tally(res["config"]), tally(cli_res)
    rows.add(P, f"data files generated ({len(dcases):,}), loader calls", len(res["data"]))
    for what, t, clear in (("data", d, "DataError naming the file"), ("configs", cf, "ConfigError naming the file or key")):
        if what == "configs":
            rows.add(P, "configs / overrides generated", len(res["config"]))
        rows.add(P, f"{what}: clear errors ({clear})", t.get("clear", 0))
        rows.add(P, f"{what}: accepted", t.get("accepted", 0))
        rows.add(P, f"{what}: unclear errors" + (" (the message does not name the file)" if what == "data" else ""),
                 t.get("unclear", 0), True)
        rows.add(P, f"{what}: tracebacks", t.get("traceback", 0), True)
        rows.add(P, f"{what}: hangs", t.get("hang", 0), True, f"> {a.case_timeout:g} s")
        if what == "data":
            rows.add(P, "data: rows dropped silently (on_error=skip: examples + skipped != rows)", len(silent), True)
    rows.add(P, "configs: YAML tags that ran code (marker file created)", len(markers), True)
    rows.add(P, "configs: reads past the size limit (> 64 MiB held for a 256 MiB file)", len(big_reads), True)
    rows.add(P, f"mode-000 cases skipped (running as root{'' if as_nobody else ', cannot drop to nobody'})",
             root_skips, note="run as uid 65534 instead" if as_nobody else "")
    rows.add(P, f"CLI runs ({sum(1 for x in cli_res if x['kind'] == 'data')} data via paced eval, "
                f"{sum(1 for x in cli_res if x['kind'] == 'config')} configs)", len(cli_res))
    rows.add(P, "CLI: clear errors (exit 2, one line 'paced <cmd>: ...')", cl.get("clear", 0))
    rows.add(P, "CLI: accepted (exit 0)", cl.get("accepted", 0))
    rows.add(P, "CLI: tracebacks", cl.get("traceback", 0), True)
    rows.add(P, "CLI: unclear exits (not 0, or not one line)", cl.get("unclear", 0), True)
    rows.add(P, "CLI: hangs", cl.get("hang", 0), True, f"> {a.cli_timeout:g} s")
    rows.add(P, "CLI: partial files left in run dirs", len(partial), True)
    bad = [r for r in res["data"] + res["config"] + cli_res if r["status"] not in ("clear", "accepted")]
    rows.examples += [{"part": P, **{k: v for k, v in r.items() if k != "result"}} for r in bad[:40]]
    rows.examples += [{"part": P, "silent_drop": s} for s in silent[:10]] + \
        [{"part": P, "marker": m} for m in markers] + [{"part": P, "big_read": b} for b in big_reads]
    return {"data": {"cases": len(dcases), "calls": len(res["data"]), **d,
                     "by_category": _by_cat(res["data"])},
            "config": {"cases": len(res["config"]), **cf, "by_category": _by_cat(res["config"])},
            "cli": {"runs": len(cli_res), **cl, "by_category": _by_cat(cli_res)},
            "silent_drops": len(silent), "markers": markers, "partial": partial, "root_skips": root_skips}


def _by_cat(results):
    out = {}
    for r in results:
        out.setdefault(r["cat"], {}).setdefault(r["status"], 0)
        out[r["cat"]][r["status"]] += 1
    return out


def part_answers(a, rows: Rows) -> dict:
    import psutil
    w = Worker()
    before = w.call({"op": "children"}, timeout=60)["children"]
    times, raised, nonbool, slow, max_children, pids, zombies, hangs = [], {}, 0, [], 0, set(), 0, 0
    batch = 20
    for start in range(0, a.n_answers, batch):
        r = w.call({"op": "answers", "seed": a.seed, "n": a.n_answers, "start": start, "count": batch,
                    "math_timeout": a.math_timeout, "gold_every": 4 if a.quick else 1}, timeout=a.answer_timeout)
        if r["status"] != "ok":
            hangs += 1
            rows.examples.append({"part": "2 answers", "batch": start, **r})
            continue
        times += r["times"]
        for k, v in r["raised"].items():
            raised[k] = raised.get(k, 0) + v
        nonbool += r["nonbool"]
        slow += r["slow"]
        max_children = max(max_children, len(r["children"]))
        pids |= {c["pid"] for c in r["children"]}
        zombies = max(zombies, sum(c["status"] == "zombie" for c in r["children"]))
        undecided = r["undecided"]
    wpid = w.proc.pid
    w.close()
    time.sleep(1.0)
    orphans = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
               and psutil.Process(p).ppid() != wpid]
    times.sort()
    p99 = times[int(0.99 * (len(times) - 1))] if times else 0.0
    strings = answer_strings(a.seed, a.n_answers)
    P = "2 answers"
    budget = f"PACED_MATH_TIMEOUT={a.math_timeout:g} s" if a.math_timeout else "math-verify budget 2 s, retried at 8 s"
    rows.add(P, f"hostile answer strings ({len({c for c, _ in strings})} kinds) x {len(verifier_examples())} examples "
                f"of the 4 verifiers + each as the reference answer{' (every 4th)' if a.quick else ''}: calls timed",
             f"{len(strings):,} strings, {len(times):,} calls")
    rows.add(P, "time per call: p99 / max", f"{p99 * 1e3:.1f} ms / {times[-1] * 1e3:,.0f} ms" if times else "-",
             note=budget)
    rows.add(P, "calls over 1 s (goal 0)", len(slow), note="examples in the JSON" if slow else "")
    rows.add(P, "exceptions raised by the VERIFIERS functions called directly", sum(raised.values()), True)
    rows.add(P, "non-bool results", nonbool, True)
    rows.add(P, "batches that hung", hangs, True, f"> {a.answer_timeout:g} s per {batch} strings")
    rows.add(P, "math-verify verdicts undecided (timed out twice, counted wrong)", undecided if times else 0)
    rows.add(P, "child processes before / at most during (1 = the math worker)", f"{len(before)} / {max_children}")
    rows.add(P, "processes leaked (children beyond the one math worker, zombies, orphans after exit)",
             max(0, max_children - 1) + zombies + len(orphans), True)
    rows.examples += [{"part": P, "slow": s} for s in sorted(slow, key=lambda x: -x[1])[:15]] + [{"part": P, "raised": k, "n": v} for k, v in raised.items()]
    return {"strings": len(strings), "calls": len(times), "p99_s": p99, "max_s": times[-1] if times else None,
            "over_1s": len(slow), "raised": raised, "nonbool": nonbool, "hangs": hangs, "children_max": max_children,
            "math_worker_pids": sorted(pids), "orphans": orphans, "zombies": zombies}


def part_crash(a, tmp: Path, rows: Rows) -> dict:
    base = tmp / "crash"
    base.mkdir()
    half = base / "half"
    if set(a.kills) - {"sft"}:        # a student that half-learned 1-digit addition: mixed pass rates
        cli(["sft", "--config", SMOKE / "sft.yaml", "data.train=[{source: add, n: 200, difficulty: 1}]",
             "train.max_steps=150", "train.per_device_train_batch_size=32", "run.save_steps=0", "optim.lr=1e-2",
             "run.threads=1", "--run-dir", half], timeout=600)
    rng = random.Random(a.seed + 3)
    modes = {"sft": ["checkpoint write", "after checkpoint", "random time"],
             "distill": ["checkpoint write", "pass-rate estimate", "after checkpoint", "random time"],
             "rl": ["checkpoint write", "after checkpoint", "random time"]}
    trials, refs = [], {}
    for cmd, n in a.kills.items():
        args, steps, est_rows = crash_commands(half / "model")[cmd]
        ref = base / f"{cmd}-ref"
        r = cli([*args, "--run-dir", ref], timeout=600)
        refs[cmd] = {"rc": r["rc"], "secs": r["secs"], "leftovers": leftovers(ref)}
        if r["rc"] != 0:
            rows.examples.append({"part": "3 crash", "reference failed": cmd, "stderr": r["stderr"][-1000:]})
            continue
        for i in range(n):
            mode = modes[cmd][i % len(modes[cmd])]
            t = crash_trial(cmd, args, steps, est_rows, ref, r["secs"], base / f"{cmd}-{i}", rng, mode,
                            kill_twice=not a.quick)
            t["trial"] = i
            trials.append(t)
            print(f"  {cmd} #{i} {mode}: identical {t['identical']}, ledger {t['ledger_equal']}, kills "
                  f"{[k.get('secs') for k in t['kills']]}", file=sys.stderr)
    P = "3 crash"
    kills = [k for t in trials for k in t["kills"] if k["killed"]]
    per = {c: [t for t in trials if t["command"] == c] for c in a.kills}
    rows.add(P, "SIGKILLs (" + ", ".join(f"{c} {sum(len(t['kills']) for t in v)}" for c, v in per.items()) + ")",
             len(kills), note=f"{sum(1 for k in kills if k['tmp_dirs'])} while a checkpoint was being written")
    ident = sum(t["identical"] for t in trials)
    rows.add(P, "resumed runs bit-identical to the uninterrupted run", f"{ident} / {len(trials)}",
             note=", ".join(f"{c} {sum(t['identical'] for t in v)}/{len(v)}" for c, v in per.items()))
    rows.add(P, "resumed runs NOT bit-identical", len(trials) - ident, True)
    rows.add(P, "ledgers that differ from the uninterrupted run's", sum(not t["ledger_equal"] for t in trials), True)
    rows.add(P, "duplicated ledger rows", sum(t["ledger_duplicates"] for t in trials), True)
    rows.add(P, "metrics.jsonl with a missing or repeated step", sum(not t["metrics_exact"] for t in trials), True)
    rows.add(P, "half-written checkpoints loaded", sum(t["half_loaded"] for t in trials), True)
    rows.add(P, "incomplete step-N directories visible after a kill", sum(t["visible_incomplete"] for t in trials), True)
    rows.add(P, "temporary / partial files left after the final resume", sum(len(t["leftovers"]) for t in trials), True)
    rows.add(P, "reference runs that failed", sum(r["rc"] != 0 for r in refs.values()), True)
    rows.add(P, "kills that came too late (run ended first, restarted)", sum(t.get("void", 0) for t in trials))
    rows.examples += [{"part": P, **t} for t in trials if not (t["identical"] and t["ledger_equal"] and t["metrics_exact"]
                                                               and not t["leftovers"] and not t["half_loaded"])][:20]
    return {"references": refs, "trials": trials, "half_model": str(half)}



def part_storage(a, tmp: Path, rows: Rows) -> dict:
    P, base, out = "4 storage", tmp / "storage", {}
    base.mkdir()
    rng = random.Random(a.seed + 4)
    # ---- two writers and a reader on one ledger at once: an existing ledger, and (full mode)
    # a new one that two writers and two readers all create at the same moment
    n = 100 if a.quick else 400
    conc = []
    for rep, fresh in enumerate([False] * (1 if a.quick else 3) + [True] * (0 if a.quick else 15)):
        db, go = base / f"conc{rep}" / "ledger.sqlite", base / f"go{rep}"
        if not fresh:
            subprocess.run([PY, "-c", f"from paced.ledger import Ledger; Ledger({str(db)!r})"], env=ENV, check=True)
        procs = [subprocess.Popen([PY, "-c", LEDGER_WRITER, str(db), tag, str(n if tag[0] == "w" else 50), str(go)],
                                  env=ENV, cwd=ROOT, stderr=subprocess.PIPE, text=True)
                 for tag in ("w1", "w2", "reader", *(["reader2"] if fresh else []))]
        time.sleep(1.5)                    # all imported and waiting
        go.touch()
        res = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        got = ledger_rows(db)
        ids = Counter(r[0] for r, k in got.items() for _ in range(k))
        conc.append({"new_file": fresh, "rcs": [rc for rc, _ in res], "crashed": sum(rc != 0 or "locked" in e for rc, e in res),
                     "rows": sum(got.values()), "expected": 2 * n * 3, "dup": sum(v - 1 for v in ids.values() if v > 1),
                     "stderr": [e[-300:] for _, e in res if e]})
    for fresh, what in ((False, "an existing ledger"), (True, "a new ledger (+ a 2nd reader), all creating it at once")):
        cs = [c for c in conc if c["new_file"] == fresh]
        if not cs:
            continue
        rows.add(P, f"2 writers + a reader on {what} ({len(cs)} runs): rows arrived / expected",
                 f"{sum(c['rows'] for c in cs):,} / {sum(c['expected'] for c in cs):,}")
        rows.add(P, f"... {what}: rows lost + duplicated", sum(c["expected"] - c["rows"] + c["dup"] for c in cs), True)
        rows.add(P, f"... {what}: processes that crashed ('database is locked', any exit != 0)",
                 sum(c["crashed"] for c in cs), True)
    out["concurrent"] = conc
    # ---- ledger files that are not SQLite -> `paced ledger --path FILE`
    good = base / "conc0" / "ledger.sqlite"
    variants = {"text": b"this is a text file, not a database\n", "random": rng.randbytes(5000),
                "truncated": good.read_bytes()[: good.stat().st_size // 2] if good.exists() else b"x",
                "header_flipped": b"SQLite format 2\x00" + (good.read_bytes()[16:] if good.exists() else b""),
                "random_big": rng.randbytes(300_000), "nul": b"\x00" * 4096}
    if a.quick:
        variants = {k: variants[k] for k in ("text",)}
    ledger_res = []
    for name, body in variants.items():
        f = base / f"bad-{name}.sqlite"
        f.write_bytes(body)
        before = f.read_bytes()
        r = cli(["ledger", "--path", f], timeout=a.cli_timeout)
        ledger_res.append({"variant": name, "status": cli_outcome(r, "ledger"), "rc": r["rc"],
                           "changed": f.read_bytes() != before, "stderr": r["stderr"][-300:]})
    st = Counter(x["status"] for x in ledger_res)
    rows.add(P, f"non-SQLite ledger files via paced ledger --path ({len(ledger_res)}): clear one-line errors",
             st.get("clear", 0))
    rows.add(P, "non-SQLite ledger files: tracebacks, unclear exits or hangs", len(ledger_res) - st.get("clear", 0)
             - st.get("accepted", 0), True)
    rows.add(P, "non-SQLite ledger files changed by reading them", sum(x["changed"] for x in ledger_res), True)
    out["not_sqlite"] = ledger_res
    # ---- damaged checkpoints: a copy of the sft reference of part 3, cut back to step-11
    ref = tmp / "crash" / "sft-ref"
    sft_args = crash_commands(Path("unused"))["sft"][0]
    marker_dir = base / "markers"
    marker_dir.mkdir()
    out["pickle_payloads_work"] = pickle_works(base)
    damage = damage_kinds(rng, marker_dir)
    if a.quick:
        damage = {k: damage[k] for k in ("pickle: trainer_state.pt",)}   # was a traceback; tests/test_errors.py has the rest
    tamper = []
    for i, (name, fn) in enumerate(damage.items() if (ref / "model").exists() else ()):
        d = base / f"damaged{i}"
        shutil.copytree(ref, d, symlinks=True)
        (d / "config.yaml").write_text((d / "config.yaml").read_text().replace(f"dir: {ref}\n", f"dir: {d}\n"))
        for x in ("checkpoints/step-12", "model", "summary.json"):
            shutil.rmtree(d / x, ignore_errors=True) if (d / x).is_dir() else (d / x).unlink(missing_ok=True)
        fn(d / "checkpoints" / "step-11")
        r = cli([*sft_args, "--run-dir", d, "--resume"], timeout=a.cli_timeout)
        m = RESUMED.search(r["stderr"])
        st = cli_outcome(r, "sft")
        ok_from = m is not None and m.group(1).endswith("step-10")
        same = st == "accepted" and weights_equal(ref / "model" / "model.safetensors", d / "model" / "model.safetensors")
        last = (r["stderr"].strip().splitlines() or [""])[-1]   # after one warning per checkpoint skipped
        refused = st == "clear" or (r["rc"] == 2 and st == "unclear" and last.startswith("paced sft: ")
                                    and all("skipping damaged checkpoint" in x for x in r["stderr"].strip().splitlines()[:-1]))
        verdict = ("fell back to step-10, bit-identical" if st == "accepted" and ok_from and same else
                   "refused in one line" if refused else
                   "damage harmless (resumed from step-11, bit-identical)" if st == "accepted" and same else
                   "damaged checkpoint loaded" if st == "accepted" else st)
        tamper.append({"damage": name, "verdict": verdict, "rc": r["rc"], "resumed_from": m.group(1) if m else None,
                       "stderr": r["stderr"][-400:] if st != "accepted" else ""})
    markers = sorted(p.name for p in marker_dir.iterdir())
    vt = Counter(t["verdict"] for t in tamper)
    rows.add(P, f"damaged checkpoints resumed with --resume ({len(tamper)} kinds of damage)",
             ", ".join(f"{v}: {n}" for v, n in vt.items()) or "-")
    rows.add(P, "damaged checkpoints loaded silently (weights differ) or tracebacks",
             len(tamper) - vt["fell back to step-10, bit-identical"] - vt["refused in one line"]
             - vt["damage harmless (resumed from step-11, bit-identical)"], True)
    rows.add(P, "pickle payloads executed (marker files created)", len(markers), True,
             "the payloads do run under pickle.load" if out["pickle_payloads_work"] else "PAYLOAD SANITY CHECK FAILED")
    out["damaged"], out["markers"] = tamper, markers
    # ---- read-only run directories (root ignores mode bits: chattr +i makes them read-only for root too)
    ro, home = [], base / "home"
    empty, done = base / "ro-empty", base / "ro-done"
    empty.mkdir()
    home.mkdir()
    cases = [("fresh eval into a read-only dir", empty, ["eval", "--config", SMOKE / "eval.yaml", "--run-dir", empty]),
             ("eval into a new dir under a read-only dir", empty,
              ["eval", "--config", SMOKE / "eval.yaml", "--run-dir", empty / "sub"])]
    if (ref / "model").exists():
        shutil.copytree(ref, done, symlinks=True)
        cfg = (done / "config.yaml").read_text()      # as if it had run here (else --resume warns first)
        (done / "config.yaml").write_text(cfg.replace(f"dir: {ref}\n", f"dir: {done}\n"))
        if good.exists():
            shutil.copy(good, done / "ledger.sqlite")
        cases += [("sft --resume of a finished run in a read-only dir", done, [*sft_args, "--run-dir", done, "--resume"]),
                  ("paced ledger on a ledger in a read-only dir", done, ["ledger", "--path", done / "ledger.sqlite"])]
    how = None
    for name, d, argv in cases[2:3] if a.quick else cases:
        how = read_only(d)
        if how is None:
            break
        before = file_hashes(d)
        try:
            r = cli(argv, timeout=a.cli_timeout)
        finally:
            read_only(d, False)
        ro.append({"case": name, "status": cli_outcome(r, argv[0]), "rc": r["rc"], "lost": before != file_hashes(d),
                   "stderr": r["stderr"][-300:]})
    if how is None:
        rows.add(P, "read-only run directories", "skipped: this user can still write after chmod / chattr")
    else:
        sr = Counter(x["status"] for x in ro)
        rows.add(P, f"read-only run directories ({len(ro)}, {how}): clear errors / accepted",
                 f"{sr.get('clear', 0)} / {sr.get('accepted', 0)}")
        rows.add(P, "read-only run directories: tracebacks, unclear exits or hangs",
                 len(ro) - sr.get("clear", 0) - sr.get("accepted", 0), True)
        rows.add(P, "read-only run directories: files changed or lost", sum(x["lost"] for x in ro), True)
    out["read_only"] = ro
    bad = [x for x in ledger_res + ro if x["status"] not in ("clear", "accepted")] + \
        [t for t in tamper if t["verdict"] not in vt or "loaded" in t["verdict"] or t["verdict"] in ("traceback", "unclear", "hang")]
    rows.examples += [{"part": P, **x} for x in bad]
    return out



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few hundred cases per part, one kill (~90 s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", default="inputs,answers,crash,storage")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/reliability[_quick].json)")
    a = ap.parse_args(argv)
    q = a.quick
    a.n_data, a.n_config, a.n_answers = (300, 160, 24) if q else (1200, 600, 1050)
    a.math_timeout = 0.25 if q else None      # --quick: a slow math-verify pair costs 1.25 s, not 10 s
    a.cli_data, a.cli_config = (1, 5) if q else (25, 60)
    a.kills = {"sft": 1} if q else {"sft": 10, "distill": 10, "rl": 10}
    a.case_timeout, a.cli_timeout, a.answer_timeout = 20.0, 120.0, 600.0
    import psutil
    t0, me = time.time(), psutil.Process()
    kids_before = {c.pid for c in me.children(recursive=True)}
    info = machine()                    # with the uncommitted files under paced/, benchmarks/, tests/
    rows = Rows()
    tmp = Path(tempfile.mkdtemp(prefix="paced-reliability-"))
    os.chmod(tmp, 0o755)            # the nobody worker reads the cases
    as_nobody = can_drop_privileges()
    out = {"machine": info, "quick": q, "seed": a.seed, "parts": {}}
    try:
        for part in a.parts.split(","):
            t = time.time()
            fn = {"inputs": lambda: part_inputs(a, tmp, rows, as_nobody), "answers": lambda: part_answers(a, rows),
                  "crash": lambda: part_crash(a, tmp, rows), "storage": lambda: part_storage(a, tmp, rows)}[part]
            out["parts"][part] = fn()
            out["parts"][part]["wall_s"] = round(time.time() - t, 1)
            print(f"[{part}: {time.time() - t:.0f} s]", file=sys.stderr)
    finally:
        if os.geteuid() == 0 and (tmp / "storage").exists():    # chattr +i, should a case have died mid-way
            subprocess.run(["chattr", "-R", "-i", str(tmp / "storage")], capture_output=True)
        for p in tmp.rglob("*"):            # mode-000 and read-only leftovers: make them removable
            if not p.is_symlink():
                try:
                    os.chmod(p, 0o755 if p.is_dir() else 0o644)
                except OSError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)
    leaked = [c.pid for c in me.children(recursive=True) if c.pid not in kids_before and c.status() != "zombie"]
    rows.add("all", "harness child processes still running at the end", len(leaked), True)
    out["wall_s"] = round(time.time() - t0, 1)
    out["rows"], out["examples"], out["failed"] = rows.rows, rows.examples, rows.failed()
    path = write_json(a.out or f"reliability{'_quick' if q else ''}.json", out)
    print(f"paced reliability{' --quick' if q else ''}: {info['date']}, {info.get('cpu', '?')} "
          f"({info['cpus']} cores), torch {info['torch']}, commit {info.get('git', '?')}, {out['wall_s']:.0f} s\n")
    print(rows.text())
    print(f"\n{'FAILED: ' + ', '.join(r['check'] for r in rows.failed()) if rows.failed() else 'every must-be-0 count is 0'}"
          f"; wrote {path}")
    return 1 if rows.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
