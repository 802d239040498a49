"""pass@k curves from eval results: the numbers picked out, the PNG, and ``paced eval``'s plot."""
import json
import sys
from pathlib import Path

import pytest

from paced.analysis.plots import passk_curves, passk_from_eval

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
EVAL = {"n": 8, "ks": [1, 2, 4, 8],
        "overall": {"problems": 3, "pass@1": 0.25, "pass@2": 0.4, "pass@8": 0.7, "pass@4": 0.55,
                    "mean@n": 0.25, "greedy": None},
        "by_source": {"add": {"problems": 1, "pass@1": 1.0, "pass@2": 1.0, "mean@n": 1.0}}}


def test_passk_from_eval_picks_the_pass_at_k_entries_in_k_order():
    assert list(passk_from_eval(EVAL).items()) == [(1, 0.25), (2, 0.4), (4, 0.55), (8, 0.7)]
    assert passk_from_eval(EVAL, "add") == {1: 1.0, 2: 1.0}


def test_passk_curves_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    curves = {"a": {1: 0.1, 2: 0.2, 4: 0.35, 256: 0.9}, "b": passk_from_eval(EVAL), "single": {1: 0.5}}
    out = passk_curves(curves, tmp_path / "sub" / "passk.png", "title",
                       errors={"a": {1: 0.05, 2: 0.05, 4: 0.1, 256: 0.2}})
    assert out == tmp_path / "sub" / "passk.png"
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 1000


def test_without_matplotlib_it_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert passk_curves({"a": {1: 0.5}}, tmp_path / "p.png") is None
    assert "pip install 'paced[plots]'" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_paced_eval_writes_passk_png(tmp_path, monkeypatch):
    """``paced eval`` in-process on a random nano model (seconds): eval.json and passk.png."""
    pytest.importorskip("matplotlib")
    import torch

    from paced.cli import main

    monkeypatch.chdir(ROOT)
    run, threads = tmp_path / "ev", torch.get_num_threads()
    try:
        assert main(["eval", "--config", str(ROOT / "configs/smoke/eval.yaml"), "--run-dir", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)  # the run sets run.threads=1: keep it from later tests
    result = json.loads((run / "eval.json").read_text())
    assert set(passk_from_eval(result)) == {1, 2, 4}
    assert (run / "passk.png").read_bytes().startswith(PNG)
