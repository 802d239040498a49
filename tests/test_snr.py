"""Cross-problem gradient SNR (docs/methods.md §1): the estimator, the p̂ bins, per-problem
gradients against plain autograd, and ``paced snr`` end to end on a nano model."""
import json
import math

import numpy as np
import pytest
import torch

from paced.analysis import snr as S
from paced.config import SNRConfig, load_config
from paced.losses import DISTILL_LOSSES
from paced.models import char_tokenizer, encode_prompts, tiny_model


def test_cross_problem_snr_by_hand():
    g = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    # mean (2, 3): ‖mean‖² = 13; deviations (-1,-1), (1,-1), (0,2): Σ‖d‖² = 2 + 2 + 4 = 8; / (N-1) = 4
    assert S.cross_problem_snr(g) == pytest.approx(13 / 4)
    assert S.cross_problem_snr(g.double()) == pytest.approx(13 / 4)


def test_cross_problem_snr_degenerate():
    assert S.cross_problem_snr(torch.tensor([[1.0, -2.0]] * 4)) == math.inf  # tr(Cov) = 0, signal > 0
    assert math.isnan(S.cross_problem_snr(torch.zeros(3, 5)))                # 0 / 0
    assert math.isnan(S.cross_problem_snr(torch.ones(1, 5)))                 # N = 1
    assert math.isnan(S.cross_problem_snr(torch.ones(0, 5)))


def test_snr_by_bin_puts_each_problem_in_its_bin():
    p = [0.0, 0.0, 1.0, 0.1, 0.2, 0.25, 0.5, 0.6, 0.75, 0.99, 1.0, 3 / 8]
    grads = torch.randn(len(p), 7, generator=torch.Generator().manual_seed(0))
    bins = S.snr_by_bin(grads, p, 4)
    assert [b["label"] for b in bins] == ["p̂ = 0", "(0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)",
                                          "[0.75, 1)", "p̂ = 1"]
    assert [b["problems"] for b in bins] == [2, 2, 2, 2, 2, 2]
    assert [(b["lo"], b["hi"]) for b in bins[1:-1]] == [(0, .25), (.25, .5), (.5, .75), (.75, 1)]
    assert bins[1]["snr"] == pytest.approx(S.cross_problem_snr(grads[[3, 4]]))
    assert bins[2]["snr"] == pytest.approx(S.cross_problem_snr(grads[[5, 11]]))
    assert bins[-1]["mean_grad_norm"] == pytest.approx(float(grads[[2, 10]].norm(dim=1).mean()))
    # edges that float rounding could push down a bin: c/K = 3/5 with 5 bins -> [0.6, 0.8)
    assert [b["problems"] for b in S.snr_by_bin(torch.ones(2, 1), [3 / 5, 0.6], 5)][4] == 2
    empty = S.snr_by_bin(grads[:3], [0.0, 0.0, 0.0], 2)
    assert [b["problems"] for b in empty] == [3, 0, 0, 0]
    assert empty[1]["snr"] is None and empty[1]["mean_grad_norm"] is None
    with pytest.raises(ValueError):
        S.snr_by_bin(grads, p[:-1], 4)


def test_is_bell():
    mk = lambda *v: [{"snr": x} for x in v]  # noqa: E731
    assert S.is_bell(mk(0.1, 0.5, 2.0, 0.3, 0.05)) is True
    assert S.is_bell(mk(3.0, 0.5, 2.0, 0.3, 0.05)) is False
    assert S.is_bell(mk(0.1, 0.5, None, 0.3, 0.9)) is False
    assert S.is_bell(mk(0.1, 0.5, 2.0, 0.3, None)) is None
    assert S.is_bell(mk(0.1, None, None, 0.2)) is None


def test_select_params_counts_tied_weights_once():
    tok = char_tokenizer()
    model = tiny_model("nano", len(tok))
    names, params = S.select_params(model, r"lm_head|embed_tokens|layers\.\d+\.mlp\.down_proj")
    assert names == ["model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="nothing_like_this"):
        S.select_params(model, "nothing_like_this")


@pytest.mark.parametrize("loss_type", ["forward_kl", "reverse_kl", "jsd"])
def test_per_problem_grads_match_autograd(loss_type):
    torch.manual_seed(0)
    tok = char_tokenizer()
    student = tiny_model("nano", len(tok), seed=0).eval()
    teacher = tiny_model("nano", len(tok), seed=1).eval()
    teacher.requires_grad_(False)
    s_prompts = encode_prompts(tok, ["1+2=", "13+4=", "7+7="])
    t_prompts = encode_prompts(tok, ["1+2=(answer 3)", "13+4=", "7+7=(answer 14)"])
    responses = [tok("3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                 tok("17 ok", add_special_tokens=False)["input_ids"],
                 tok("14", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    params = [student.lm_head.weight, student.model.layers[0].mlp.down_proj.weight]
    fn, kw = DISTILL_LOSSES[loss_type], ({"beta": 0.3} if loss_type == "jsd" else {})
    got = S.per_problem_grads(student, teacher, s_prompts, t_prompts, responses, tok.pad_token_id,
                              params, fn, kw, chunk_size=2)
    assert got.shape == (3, sum(p.numel() for p in params))
    for i, (sp, tp, r) in enumerate(zip(s_prompts, t_prompts, responses)):
        s_logits = student(torch.tensor([sp + r])).logits[:, len(sp) - 1: len(sp) + len(r) - 1]
        with torch.no_grad():
            t_logits = teacher(torch.tensor([tp + r])).logits[:, len(tp) - 1: len(tp) + len(r) - 1]
        loss = fn(s_logits, t_logits, **kw).mean()
        want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        assert want.norm() > 0
        torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-6)


def test_run_end_to_end(tmp_path):
    cfg = load_config(SNRConfig, None, [
        "student.preset=nano", "teacher.path=self", "teacher.privileged=true",
        "data.train=[{source: add, n: 16, difficulty: 1}]", "passrate.num_generations=4",
        "sampling.max_completion_length=10", "snr.bins=4", "snr.params=lm_head|layers\\.\\d+\\.mlp\\.down_proj", "run.progress=false"], run_dir=tmp_path)
    result = S.run(cfg)
    out = json.loads((tmp_path / "snr.json").read_text())
    assert out["problems"] == 16 and out["responses"] == "teacher" and out["loss_type"] == "forward_kl"
    assert [b["label"] for b in out["bins"]] == ["p̂ = 0", "(0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)",
                                                 "[0.75, 1)", "p̂ = 1"]
    assert sum(b["problems"] for b in out["bins"]) == 16
    # a random nano model solves nothing: every problem sits in the p̂ = 0 bin
    assert out["bins"][0]["problems"] == 16 and out["bins"][0]["snr"] > 0
    assert all(b["problems"] == 0 and b["snr"] is None for b in out["bins"][1:])
    assert out["bell"] is None and result["bell"] is None
    assert sorted(out["param_names"]) == ["lm_head.weight", "model.layers.0.mlp.down_proj.weight"]
    assert out["overall_snr"] == pytest.approx(out["bins"][0]["snr"])
    assert out["p_hat_histogram"]["at_zero"] == 16 and len(out["per_problem"]) == 16
    # p̂ is reused from the ledger on a rerun (no double counting of K)
    again = S.run(cfg)
    assert again["bins"][0]["problems"] == 16
    assert again["overall_snr"] == pytest.approx(out["overall_snr"])


def test_debiased_snr_removes_the_one_over_n_floor():
    """Pure noise: the plain ratio is about 1/N, the debiased one about 0 whatever N."""
    gen = torch.Generator().manual_seed(0)
    for n in (5, 50):
        g = torch.randn(n, 4000, generator=gen, dtype=torch.float64)
        assert S.cross_problem_snr(g) == pytest.approx(1 / n, rel=0.2)
        assert abs(S.cross_problem_snr(g, debias=True)) < 0.2 / n
    # a pure signal plus noise: debiased = ‖μ‖² / tr(Σ) on average
    mu = torch.full((4000,), 0.5, dtype=torch.float64)
    g = mu + torch.randn(40, 4000, generator=gen, dtype=torch.float64)
    assert S.cross_problem_snr(g, debias=True) == pytest.approx(0.25, rel=0.1)
    assert S.cross_problem_snr(g) == pytest.approx(0.25 + 1 / 40, rel=0.1)


def test_jackknife_interval_matches_slow_leave_one_out_and_covers():
    gen = torch.Generator().manual_seed(1)
    mu = torch.full((2000,), 0.5, dtype=torch.float64)
    small = mu + torch.randn(10, 2000, generator=gen, dtype=torch.float64)
    large = mu + torch.randn(200, 2000, generator=gen, dtype=torch.float64)
    # the closed form equals leaving each problem out by hand
    loo = np.array([S.cross_problem_snr(torch.cat([small[:i], small[i + 1:]]), debias=True) for i in range(10)])
    se = np.sqrt(9 / 10 * ((loo - loo.mean()) ** 2).sum())
    theta = S.cross_problem_snr(small, debias=True)
    assert S.jackknife_ci(small) == pytest.approx((theta - 1.96 * se, theta + 1.96 * se), rel=1e-9)
    lo_s, hi_s = S.jackknife_ci(small)
    lo_l, hi_l = S.jackknife_ci(large)
    assert lo_l <= 0.25 <= hi_l and lo_s <= 0.25 <= hi_s          # the true ‖μ‖² / tr(Σ)
    assert hi_l - lo_l < hi_s - lo_s                              # more problems, tighter interval
    assert S.jackknife_ci(small[:2]) is None
