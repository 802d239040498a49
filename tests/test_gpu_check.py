"""benchmarks/gpu_check.py: its CPU mode end to end (the script cannot rot), and its pure helpers
(the FLOP count, MFU, the op categories, section statuses, the table)."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check as G  # noqa: E402
import gpu_check_runs as R  # noqa: E402
import gpu_check_steps as S  # noqa: E402

STATUS = re.compile(r"^(ok|missed goal|failed|skipped: .+)$")
SHAPE = {"hidden": 8, "layers": 1, "heads": 2, "kv_heads": 1, "inter": 16, "vocab": 10}


def test_flops_by_hand():
    # d 8, 1 layer, 2 heads of 4, 1 kv head, MLP 16, vocab 10: q 8·8 + k, v 2·8·4 + o 8·8 + MLP 3·8·16
    assert S.matmul_params(SHAPE) == (64 + 64 + 64 + 384, 80)
    assert S.attention_flops(SHAPE, B=2, T=4) == 2 * 1 * 2 * 4 * 16 * 2          # 2·L·h·hd·T²·B = 512
    fwd_body = 2 * 576 * 2 * 4 + 512                                             # 9,728
    assert S.step_flops(SHAPE, "sft", 2, 4, 3) == {"student": 3 * (fwd_body + 2 * 80 * 8)}
    assert S.step_flops(SHAPE, "rl", 2, 4, 3) == {"student": 3 * (fwd_body + 2 * 80 * 6)}
    assert S.step_flops(SHAPE, "distill", 2, 4, 3) == {"student": 3 * (fwd_body + 2 * 80 * 6),
                                                       "teacher": fwd_body + 2 * 80 * 6}


def test_matmul_params_match_the_built_model():
    import torch
    model = S.qwen2(SHAPE | {"layers": 2}, 0, "cpu", torch.float32)
    proj = sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight"))
    body, head = S.matmul_params(SHAPE | {"layers": 2})
    assert body == proj
    assert head == model.get_output_embeddings().weight.numel()
    assert model.config.tie_word_embeddings


def test_qwen05_is_qwen25_05b_shaped():
    body, head = S.matmul_params(S.QWEN05)
    # Qwen2.5-0.5B: 494,032,768 parameters = these matmul weights + the q/k/v biases + 49 RMSNorm weights
    biases = 24 * (896 + 2 * 128)
    assert body + head + biases + (2 * 24 + 1) * 896 == 494_032_768


def test_mfu_arithmetic():
    assert S.mfu(4e12, 2.0, 5e12) == pytest.approx(0.4)
    assert G.judged(True, False) == ("missed goal", False)
    assert G.judged(True, True) == ("ok", True)
    assert G.judged(False, False) == ("ok", None)          # a GPU goal is not judged on the CPU


def event(name, parent=None):
    return SimpleNamespace(name=name, cpu_parent=parent)


def test_op_categories_follow_the_enclosing_op():
    step = event("Optimizer.step#AdamW.step")
    sdpa = event("aten::scaled_dot_product_attention")
    assert S.category(event("aten::mul_", step)) == "optimizer"
    assert S.category(event("aten::exp", sdpa)) == "attention"
    assert S.category(event("aten::mm", event("aten::linear"))) == "matmul"
    assert S.category(event("aten::_log_softmax")) == "softmax/exp"
    assert S.category(event("aten::rsqrt")) == "other elementwise"
    evs = [SimpleNamespace(name="aten::mm", key="aten::mm", cpu_parent=None, device_type="DeviceType.CPU",
                           self_cpu_time_total=2000.0, is_user_annotation=False),
           SimpleNamespace(name="x", key="x", cpu_parent=None, device_type="DeviceType.CPU",
                           self_cpu_time_total=500.0, is_user_annotation=True)]     # annotations: skipped
    got = S.categorise(evs, cuda=False)
    assert got["matmul"] == pytest.approx(0.002) and sum(got.values()) == pytest.approx(0.002)


def test_section_status_and_table_rows():
    ck = G.Check(10)
    ck.row("c", "sft", "ok", "1 s", "goal", None)
    ck.row("c", "distill", "missed goal", "2 s", "goal", False)
    ck.row("d", "a", "skipped: time budget")
    ck.row("b", "x", "ok", met=True)
    ck.row("b", "y", "skipped: no CUDA")
    for key in ("c_throughput", "d_rollout", "b_smoke"):
        ck.close(key, 0.0)
    assert [ck.sections[k]["status"] for k in ("c_throughput", "d_rollout", "b_smoke")] == \
        ["missed goal", "skipped: time budget", "ok"]
    ck.row("b", "z", "failed")
    ck.close("b_smoke", 0.0)
    assert ck.sections["b_smoke"]["status"] == "failed"
    rows = G.cells(ck.rows)
    assert [r[0] for r in rows] == ["b", "b", "b", "c", "c", "d"]      # by section, stable within one
    assert rows[3] == ["c", "sft", "ok", "1 s", "goal", ""] and rows[4][-1] == "NO" and rows[0][-1] == "yes"
    text = G.table(G.HEAD, rows)
    assert text[0].split() == G.HEAD and len(text) == 1 + len(rows)


def test_the_gpu_tests_are_found():
    assert "tests/test_gpu.py" in R.gpu_test_files()


def test_a_missing_package_is_one_clear_line(monkeypatch, capsys):
    real = G.importlib.util.find_spec
    monkeypatch.setattr(G.importlib.util, "find_spec", lambda name, *a: None if name == "rich" else real(name, *a))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--cpu"])
    assert G.main() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpu_check: missing Python package(s): rich") and "\n" not in err


@pytest.mark.slow
def test_cpu_mode_end_to_end(tmp_path):
    out = tmp_path / "gpu_check_cpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "cpu" and res["missing"]
    assert set(res["sections"]) == {"a_gpu_tests", "b_smoke", "c_throughput", "d_rollout", "e_memory", "f_scale_out"}
    assert all(STATUS.match(s["status"]) for s in res["sections"].values())
    assert all(STATUS.match(r["status"]) for r in res["rows"]) and {r["section"] for r in res["rows"]} == set("abcdef")
    c = res["sections"]["c_throughput"]
    assert c["peak"]["flops_per_s"] > 0 and c["parameters"] > 0
    assert {n.split()[0] for n in c["runs"]} == {"sft", "distill", "rl"} and len(c["runs"]) == 6
    for run in c["runs"].values():
        assert run["median_s"] > 0 and 0 < run["mfu"] < 1 and run["tokens_per_s"] > 0
    longest = c["runs"][f"distill T={max(res['settings']['seqs'])}"]
    assert longest["profile"]["busy_s"] > 0 and longest["kl_alone"]["median_s"] > 0
    d = res["sections"]["d_rollout"]
    assert d["ours_tok_s"] > 0 and d["hf_tok_s"] > 0 and math.isfinite(d["ratio"]) and d["draw"]["host_multinomial_s"] > 0
    assert res["sections"]["e_memory"]["ratio"] > 0
    smoke = res["sections"]["b_smoke"]["runs"]
    assert all(smoke[n]["status"] == "ok" and smoke[n]["saved_dtype"] == "bfloat16" for n in G.SMOKES)
    assert smoke["resume"]["resumed_vs_full"]["equal"] and smoke["rl_guide"]["guided_groups"] > 0
    f = {r["check"]: r["status"] for r in res["rows"] if r["section"] == "f"}
    assert f == {"accelerate launch ddp.yaml, 1 process": "ok",
                 "accelerate launch fsdp.yaml, 1 process": "skipped: needs CUDA"}
    assert res["sections"]["a_gpu_tests"]["status"] == "skipped: no CUDA"
    # the table, printed last: its header and one line per row
    assert re.search(r"^sec\s+check\s+status\s+value\s+goal\s+met$", proc.stdout, re.M)
    for r in res["rows"]:
        assert r["check"] in proc.stdout
