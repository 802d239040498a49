"""``paced analyze``: per-problem classes, the exact split of Δpass@1, k, errors, and the CLI."""
import json
import os
import subprocess
import sys
from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np
import pytest

from paced.analysis.compression import CLASSES, analyze, classify, run
from paced.cli import build_parser, main
from paced.evaluate import aggregate

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
PNG = b"\x89PNG\r\n\x1a\n"

# one problem per class (two for unchanged_or_worse: worse, and equal pass@1); n = 4 then 8
BEFORE = {"comp": (1, 4), "gain": (0, 4), "loss": (2, 4), "worse": (3, 4), "same": (2, 4), "uns": (0, 4)}
AFTER = {"comp": (6, 8), "gain": (6, 8), "loss": (0, 8), "worse": (4, 8), "same": (4, 8), "uns": (0, 8)}
EXPECTED = {"comp": "compression", "gain": "capability_gain", "loss": "capability_loss",
            "worse": "unchanged_or_worse", "same": "unchanged_or_worse", "uns": "unsolved"}
# Δpass@1 per problem: +1/2, +3/4, -1/2, -1/4, 0, 0 over 6 problems
PARTS = {"compression": Fraction(1, 12), "capability_gain": Fraction(1, 8),
         "capability_loss": Fraction(-1, 12), "unchanged_or_worse": Fraction(-1, 24), "unsolved": 0}


def eval_json(counts: dict, sources: dict | None = None) -> dict:
    """An eval result in exactly the shape ``paced.evaluate.evaluate`` returns (and run writes)."""
    n = max(n for _, n in counts.values())
    ks = [1, 2, 4] + ([8] if n >= 8 else [])
    problems = [{"id": pid, "source": (sources or {}).get(pid, "add"), "difficulty": 1, "n": n_, "c": c,
                 "greedy": c > 0, "samples": ["1", "2"]} for pid, (c, n_) in counts.items()]
    by_source = {}
    for p in problems:
        by_source.setdefault(p["source"], []).append(p)
    return {"n": n, "ks": ks, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
            "overall": aggregate(problems, ks),
            "by_source": {s: aggregate(ps, ks) for s, ps in by_source.items()},
            "by_difficulty": {}, "problems": problems, "model": "runs/x/model"}


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_classify_follows_the_definitions():
    f = Fraction
    assert classify(0.0, 0.0, f(0), f(0)) == "unsolved"
    assert classify(0.0, 0.1, f(0), f(1, 8)) == "capability_gain"
    assert classify(0.5, 0.0, f(1, 4), f(0)) == "capability_loss"
    assert classify(0.5, 0.9, f(1, 4), f(1, 2)) == "compression"
    assert classify(0.5, 0.9, f(1, 2), f(1, 2)) == "unchanged_or_worse"   # equal pass@1: no gain
    assert classify(0.9, 0.5, f(3, 4), f(1, 2)) == "unchanged_or_worse"


def test_hand_made_pair_classes_and_exact_split():
    r = analyze(BEFORE, AFTER)
    assert {p["id"]: p["class"] for p in r["per_problem"]} == EXPECTED
    o = r["overall"]
    assert {c: v["count"] for c, v in o["classes"].items()} == {
        "compression": 1, "capability_gain": 1, "capability_loss": 1, "unchanged_or_worse": 2, "unsolved": 1}
    assert o["classes"]["unchanged_or_worse"]["share"] == pytest.approx(2 / 6)
    for cls, part in PARTS.items():
        assert o["classes"][cls]["delta_pass@1"] == pytest.approx(float(part), abs=1e-15), cls
    # the total, computed independently, is the sum of the parts
    total = np.mean([c / n for c, n in AFTER.values()]) - np.mean([c / n for c, n in BEFORE.values()])
    assert o["delta_pass@1"] == pytest.approx(total, abs=1e-15) == pytest.approx(1 / 12, abs=1e-15)
    assert sum(v["delta_pass@1"] for v in o["classes"].values()) == pytest.approx(total, abs=1e-15)
    assert o["pass@1_before"] == pytest.approx(8 / 24) and o["pass@1_after"] == pytest.approx(20 / 48)
    assert r["headline"] == ("of +0.083 pass@1: +0.083 from compression, +0.125 from capability gain, "
                             "-0.083 from capability loss, -0.042 from unchanged or worse")


def test_split_adds_up_on_random_pairs_and_per_source():
    rng = np.random.default_rng(0)
    for trial in range(30):
        m, nb, na = rng.integers(1, 40), rng.integers(1, 17), rng.integers(1, 17)
        before = {str(i): (int(rng.integers(0, nb + 1)), int(nb)) for i in range(m)}
        after = {str(i): (int(rng.integers(0, na + 1)), int(na)) for i in range(m)}
        sources = {str(i): "ab"[i % 2] for i in range(m)}
        r = analyze(before, after, sources=sources)
        total = np.mean([c / n for c, n in after.values()]) - np.mean([c / n for c, n in before.values()])
        for s in [r["overall"], *r["by_source"].values()]:
            assert sum(v["delta_pass@1"] for v in s["classes"].values()) == pytest.approx(s["delta_pass@1"], abs=1e-12)
            assert sum(v["count"] for v in s["classes"].values()) == s["problems"]
        assert r["overall"]["delta_pass@1"] == pytest.approx(total, abs=1e-12), trial
        assert sum(s["problems"] for s in r["by_source"].values()) == m


def test_pass_at_k_is_the_unbiased_estimator_and_k_defaults_to_before_n():
    r = analyze(BEFORE, AFTER)
    assert r["k"] == 4                      # BEFORE's n (AFTER has n = 8)
    r2 = analyze(BEFORE, AFTER, k=2)
    comp = next(p for p in r2["per_problem"] if p["id"] == "comp")
    assert comp["pass@k_before"] == pytest.approx(1 - comb(3, 2) / comb(4, 2))    # 1/2
    assert comp["pass@k_after"] == pytest.approx(1 - comb(2, 2) / comb(8, 2))     # 27/28
    assert r2["overall"]["pass@k_before"] == pytest.approx(np.mean([p["pass@k_before"] for p in r2["per_problem"]]))
    # classes do not depend on k (unbiased pass@k is 0 exactly when c = 0)
    assert [p["class"] for p in r2["per_problem"]] == [p["class"] for p in r["per_problem"]]
    assert analyze(AFTER, BEFORE)["k"] == 4  # BEFORE n = 8, capped at AFTER's n = 4


@pytest.mark.parametrize("k,message", [(5, "--k 5 is larger than the n=4 samples per problem in old.json"),
                                       (0, "--k must be at least 1")])
def test_k_is_validated(k, message):
    with pytest.raises(ValueError, match=message):
        analyze(BEFORE, AFTER, k=k, names=("old.json", "new.json"))
    with pytest.raises(ValueError, match="larger than the n=4 samples per problem in new.json"):
        analyze(AFTER, BEFORE, k=8, names=("old.json", "new.json"))


def test_mismatched_ids_name_both_files(tmp_path):
    a = write(tmp_path / "a" / "eval.json", eval_json(BEFORE))
    b = write(tmp_path / "b" / "eval.json", eval_json({**AFTER, "extra": (1, 8)}))
    with pytest.raises(ValueError) as e:
        run(a, b)
    assert str(a) in str(e.value) and str(b) in str(e.value)
    assert "1 only in" in str(e.value) and "'extra'" in str(e.value) and "(6 in common)" in str(e.value)
    c = write(tmp_path / "c" / "eval.json", eval_json({"other": (1, 4)}))
    with pytest.raises(ValueError, match="no problem ids in common between"):
        run(a, c)
    assert not (tmp_path / "b" / "analyze.json").exists()


@pytest.mark.parametrize("content,message", [
    ("{not json", "not a JSON file"),
    ("[1, 2]", "expected a JSON object"),
    ({"eval/pass@1": 0.2, "eval/pass@8": 0.5}, "no per-problem records"),   # a trainer's summary
    ({"problems": [{"id": "comp", "n": 4}]}, "problems[0]: expected an object with 'id', 'n' and 'c'"),
    ({"problems": [{"id": "comp", "n": 4, "c": 5}]}, "problems[0]: needs integers 0 <= c <= n"),
    ({"problems": [{"id": "x", "n": 4, "c": 1}, {"id": "x", "n": 4, "c": 2}]}, "problems[1]: duplicate problem id 'x'"),
])
def test_malformed_file_is_a_clear_cli_error(tmp_path, capsys, content, message):
    good = write(tmp_path / "good" / "eval.json", eval_json(BEFORE))
    bad = write(tmp_path / "bad.json", content)
    assert main(["analyze", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"paced analyze: error: {bad}") and message in err and "Traceback" not in err


def test_missing_file_and_run_directory(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    assert f"paced analyze: error: {tmp_path / 'nope'}: no such eval file" in capsys.readouterr().err
    write(tmp_path / "a" / "eval.json", eval_json(BEFORE))
    write(tmp_path / "b" / "eval.json", eval_json(AFTER))
    assert main(["analyze", str(tmp_path / "a"), str(tmp_path / "b")]) == 0   # run dirs
    assert json.loads((tmp_path / "b" / "analyze.json").read_text())["before"] == str(tmp_path / "a" / "eval.json")


def test_help_lists_analyze():
    assert "analyze" in build_parser().format_help()
    out = subprocess.run([sys.executable, "-m", "paced", "analyze", "--help"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=60).stdout
    assert "before" in out and "--k" in out and "--out" in out


@pytest.fixture(scope="module")
def real_eval(tmp_path_factory):
    """An eval.json written by ``paced eval`` itself (random nano model, smoke config: seconds)."""
    import torch

    run_dir, threads = tmp_path_factory.mktemp("ev") / "before", torch.get_num_threads()
    try:
        assert main(["eval", "--config", str(ROOT / "configs/smoke/eval.yaml"), "--run-dir", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(threads)  # the run sets run.threads=1
    return run_dir


def test_cli_end_to_end_on_real_eval_output(real_eval, tmp_path):
    before = json.loads((real_eval / "eval.json").read_text())
    n, ids = before["n"], [p["id"] for p in before["problems"]]
    assert n == 4 and len(ids) == 16
    # AFTER: the same file with the counts rewritten so that every class occurs
    after = json.loads(json.dumps(before))
    plan = [(1, 3), (0, 2), (2, 0), (3, 1), (0, 0)]   # compression, gain, loss, worse, unsolved
    for i, p in enumerate(before["problems"]):
        p["c"], after["problems"][i]["c"] = plan[i % 5]
    write(real_eval / "eval.json", before)
    write(tmp_path / "after" / "eval.json", after)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "paced.cli", "analyze", str(real_eval),
                           str(tmp_path / "after" / "eval.json"), "--out", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "analyze.json").read_text())
    assert r["k"] == 4 and r["problems"] == 16 and [p["id"] for p in r["per_problem"]] == ids
    counts = {c: v["count"] for c, v in r["overall"]["classes"].items()}
    assert counts == {"compression": 4, "capability_gain": 3, "capability_loss": 3,
                      "unchanged_or_worse": 3, "unsolved": 3}
    assert set(r["by_source"]) == {"add", "modular"}
    assert r["overall"]["delta_pass@1"] == pytest.approx((4 * 2 + 3 * 2 - 3 * 2 - 3 * 2) / 4 / 16)
    for row in ("compression", "capability_gain", "by source", "modular", r["headline"], "wrote"):
        assert row in proc.stderr, row
    try:
        import matplotlib  # noqa: F401
        assert (out / "analyze.png").read_bytes().startswith(PNG)
    except ImportError:
        assert "pip install" in proc.stderr
    # --k beyond n: a clear error through the CLI
    proc = subprocess.run([sys.executable, "-m", "paced.cli", "analyze", str(real_eval),
                           str(tmp_path / "after"), "--k", "9"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert ("paced analyze: error: --k 9 is larger than the n=4 samples per problem in "
            f"{real_eval / 'eval.json'}") in proc.stderr


def test_without_matplotlib_json_is_still_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    a = write(tmp_path / "a" / "eval.json", eval_json(BEFORE))
    b = write(tmp_path / "b" / "eval.json", eval_json(AFTER))
    r = run(a, b)
    assert json.loads((tmp_path / "b" / "analyze.json").read_text())["headline"] == r["headline"]
    assert not (tmp_path / "b" / "analyze.png").exists()
    assert "pip install 'paced[plots]'" in capsys.readouterr().err


def test_analyze_png(tmp_path):
    pytest.importorskip("matplotlib")
    a = write(tmp_path / "a" / "eval.json", eval_json(BEFORE, {"gain": "mul"}))
    b = write(tmp_path / "b" / "eval.json", eval_json(AFTER, {"gain": "mul"}))
    r = run(a, b, k=2, out=tmp_path / "o")
    assert set(r["by_source"]) == {"add", "mul"} and set(r["overall"]["classes"]) == set(CLASSES)
    assert (tmp_path / "o" / "analyze.png").read_bytes().startswith(PNG)
    assert (tmp_path / "o" / "analyze.png").stat().st_size > 1000
