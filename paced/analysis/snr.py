"""Cross-problem gradient SNR of the distillation loss, per pass-rate bin (docs/methods.md §1).

    paced snr --config configs/snr.yaml student.path=... teacher.path=...

The paper's central observation: SNR = ‖mean_i g_i‖² / tr(Cov_i g_i) over per-problem gradients
g_i of the distillation loss is a bell curve in the student's pass rate p̂, ≈ 0 at p̂ = 0 and 1.

Algorithm:
    problems <- the first snr.max_problems of data.train
    p̂_i      <- c_i / K from K = passrate.num_generations student rollouts at sampling.temperature
                (recorded in the ledger; rows already there for (model, stage, step 0) are reused)
    y_i      <- one response per problem: teacher (greedy, or snr.teacher_temperature) or student
                (T = 1), as DEFAULT_RESPONSES pairs them with snr.loss_type when responses = auto
    ℓ_i      <- mean over y_i's tokens of loss(p_S, p_T), full vocabulary (teacher sees the
                privileged prompt when teacher.privileged)
    g_i      <- ∇ ℓ_i w.r.t. the parameters whose names match snr.params, flattened  -> (N, P)
    bins     <- {p̂ = 0}, snr.bins equal-width bins over (0, 1), {p̂ = 1}
    SNR(bin) <- ‖mean g‖² / tr(Cov g) over the bin's problems (unbiased N-1 covariance), and
                debiased: (‖mean g‖² − tr(Cov g)/N) / tr(Cov g), since E‖mean g‖² = ‖E g‖² + tr(Cov)/N,
                with a 95% interval from the leave-one-problem-out jackknife
    bell     <- the largest SNR sits in an interior bin and both end bins are lower (both versions)

Deviations and choices: gradients of a parameter subset (regex ``snr.params``; the full
gradient of a 1B+ model times N problems does not fit in memory; (N, P) fp32 is kept on the
CPU); the student runs in eval mode (no dropout: the gradient is the deterministic one of the
loss); the loss's own knobs (KL temperature 1, JSD β 0.5, AKL μ 0.5) are ``losses.loss_kwargs``'s
defaults; one response per problem, so g_i also carries the response's sampling noise. Tied
weights (lm_head = embed_tokens) count once, under the first of their names the regex matches.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn

from ..config import SNRConfig
from ..ledger import Ledger, histogram
from ..losses import DEFAULT_RESPONSES, DISTILL_LOSSES, chunked_token_loss, loss_kwargs, masked_mean
from ..models import encode_prompts, logits_head, prompt_room, stop_token_ids
from ..passrate import estimate, histogram_text
from ..rollout import SamplingParams, sample
from ..runlog import console, write_json
from ..teacher import load_teacher, response_hidden, teacher_hidden
from ..train.batches import pack

CHUNK_SIZE = 256        # response positions per logits chunk
MAX_GRAD_BYTES = 8 * 2**30  # the (N, P) fp32 gradient matrix is refused beyond this


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------
def cross_problem_snr(grads: torch.Tensor, debias: bool = False) -> float:
    """‖mean_i g_i‖² / tr(Cov_i g_i) of grads (N, P), unbiased (N-1) covariance, in fp64.

    nan if N < 2 (no covariance). If tr(Cov) = 0 (all g_i identical): inf when the mean is
    non-zero, nan when it is zero too (0 / 0: no signal and no noise).
    ``debias``: the plug-in ‖mean g‖² overestimates ‖E g‖² by tr(Cov)/N, so with pure noise
    the plain ratio is ≈ 1/N and a bin with few problems looks better than one with many.
    The debiased ratio subtracts it: (‖mean g‖² − tr(Cov)/N) / tr(Cov) (≈ 0 for pure noise;
    can be negative). Bins of different sizes are only comparable debiased.
    """
    g = grads.detach().double()
    if g.dim() != 2:
        raise ValueError(f"cross_problem_snr: expected grads (N, P), got shape {tuple(g.shape)}")
    if g.shape[0] < 2:
        return float("nan")
    mean = g.mean(0)                                              # (P,)
    signal = float(mean.square().sum())
    noise = float((g - mean).square().sum() / (g.shape[0] - 1))  # tr(Cov)
    if noise == 0:
        return float("inf") if signal > 0 else float("nan")
    if debias:
        signal -= noise / g.shape[0]
    return signal / noise


def jackknife_ci(grads: torch.Tensor, debias: bool = True, z: float = 1.96) -> tuple[float, float] | None:
    """θ̂ ± z·SE of ``cross_problem_snr(grads, debias)``, SE from the leave-one-problem-out
    jackknife, SE² = (N−1)/N Σ_i (θ_(i) − θ̄)², each θ_(i) in closed form from the sums
    S1 = Σ g_i and S2 = Σ ‖g_i‖² (O(N·P), no resampling). None if N < 3 or undefined.
    (A bootstrap over problems is biased here: duplicated rows shrink the covariance by more
    than the interval's width when P ≫ N.)"""
    g = grads.detach().double()
    n = g.shape[0]
    if n < 3:
        return None
    theta = cross_problem_snr(g, debias)
    if not math.isfinite(theta):
        return None
    s1 = g.sum(0)                                                # (P,)
    sq = g.square().sum(1)                                       # (N,)
    m = n - 1
    mean_sq = (s1.square().sum() - 2 * (g @ s1) + sq) / m ** 2   # (N,) ‖mean without i‖²
    noise = (sq.sum() - sq - m * mean_sq) / (m - 1)              # (N,) tr(Cov) without i
    signal = mean_sq - noise / m if debias else mean_sq          # (N,)
    if (noise <= 0).any():
        return None
    loo = (signal / noise).numpy()                               # (N,)
    se = math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum()))
    return theta - z * se, theta + z * se


def snr_by_bin(grads: torch.Tensor, p_hat, bins: int) -> list[dict]:
    """SNR per p̂ bin: p̂ = 0 alone, ``bins`` equal-width bins over (0, 1), p̂ = 1 alone.

    Interior bin j holds lo <= p̂ < hi (the first one 0 < p̂ < hi), with 1e-9 slack so that
    p̂ = c/K on an edge is not pushed down a bin by float rounding. ``snr`` is None where it is
    undefined (fewer than 2 problems, or 0 / 0); ``mean_grad_norm`` is the mean ‖g_i‖ (None if empty).
    """
    p = np.asarray(p_hat, dtype=float)
    if p.shape != (grads.shape[0],):
        raise ValueError(f"snr_by_bin: {p.size} pass rates for {grads.shape[0]} gradients")
    interior = (p > 0) & (p < 1)
    idx = np.clip(np.floor(p * bins + 1e-9), 0, bins - 1).astype(int)
    specs = [(0.0, 0.0, "p̂ = 0", p == 0)]
    for j in range(bins):
        lo, hi = j / bins, (j + 1) / bins
        specs.append((lo, hi, f"{'(' if j == 0 else '['}{lo:.3g}, {hi:.3g})", interior & (idx == j)))
    specs.append((1.0, 1.0, "p̂ = 1", p == 1))
    norms = grads.detach().double().norm(dim=1)                  # (N,)
    out = []
    for lo, hi, label, member in specs:
        sel = torch.from_numpy(np.flatnonzero(member))
        snr = cross_problem_snr(grads[sel]) if len(sel) else float("nan")
        deb = cross_problem_snr(grads[sel], debias=True) if len(sel) else float("nan")
        out.append({"lo": lo, "hi": hi, "label": label, "problems": int(len(sel)),
                    "snr": None if math.isnan(snr) else snr,
                    "snr_debiased": None if math.isnan(deb) else deb,
                    "snr_debiased_ci95": jackknife_ci(grads[sel]) if len(sel) else None,
                    "mean_grad_norm": float(norms[sel].mean()) if len(sel) else None})
    return out


def is_bell(bins: list[dict], key: str = "snr") -> bool | None:
    """True iff the largest SNR (``bins[i][key]``) is in an interior bin and both end bins
    (p̂ = 0, p̂ = 1) are strictly lower; None when an end bin has no SNR or no interior bin has one."""
    ends, inner = (bins[0][key], bins[-1][key]), [b[key] for b in bins[1:-1] if b[key] is not None]
    if None in ends or not inner:
        return None
    return bool(max(inner) > max(ends))


def select_params(model: nn.Module, pattern: str) -> tuple[list[str], list[nn.Parameter]]:
    """Parameters whose names match ``pattern`` (re.search); tied tensors once."""
    names, params, seen = [], [], set()
    for name, prm in model.named_parameters(remove_duplicate=False):
        if re.search(pattern, name) and id(prm) not in seen:
            seen.add(id(prm))
            names.append(name)
            params.append(prm)
    if not params:
        some = [n for n, _ in model.named_parameters()][:8]
        raise ValueError(f"snr.params: no parameter name matches the regex {pattern!r}; "
                         f"names look like {some}")
    return names, params


def per_problem_grads(student, teacher, s_prompts: list[list[int]], t_prompts: list[list[int]],
                      responses: list[list[int]], pad_token_id: int, params: list[nn.Parameter],
                      loss_fn, loss_kw: dict, chunk_size: int = CHUNK_SIZE) -> torch.Tensor:
    """(N, P) fp32 on the CPU: row i is ∇ of problem i's sequence-mean loss w.r.t. ``params``.

    One problem at a time (no padding, so each row is exactly that problem's gradient): the
    student sees s_prompts[i] + responses[i], the teacher t_prompts[i] + responses[i]; the loss is
    ``masked_mean(chunked_token_loss(...))`` over the response tokens, as in distill_step.
    """
    if not responses or any(len(r) == 0 for r in responses):
        raise ValueError("per_problem_grads: every problem needs a non-empty response")
    head_s, head_t = logits_head(student), logits_head(teacher)
    dev_s, dev_t = params[0].device, next(teacher.parameters()).device
    rows = []
    for sp, tp, r in zip(s_prompts, t_prompts, responses, strict=True):
        s_ids, s_mask, s_pos, Ps = pack([sp], [r], pad_token_id)
        t_ids, t_mask, t_pos, Pt = pack([tp], [r], pad_token_id)
        h_s = response_hidden(student, s_ids.to(dev_s), s_mask.to(dev_s), s_pos.to(dev_s), Ps, len(r))
        h_t = teacher_hidden(teacher, t_ids.to(dev_t), t_mask.to(dev_t), t_pos.to(dev_t), Pt, len(r))
        per_token = chunked_token_loss(h_s, h_t.to(dev_s), head_s, lambda h: head_t(h.to(dev_t)).to(dev_s),
                                       loss_fn, chunk_size=chunk_size, **loss_kw)     # (1, R)
        loss = masked_mean(per_token, s_mask[:, Ps:].to(dev_s))[0]
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(q)).reshape(-1).float().cpu()
                               for g, q in zip(gs, params)]))
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def run(cfg: SNRConfig) -> dict:
    """``paced snr``: p̂, per-problem gradients, SNR per bin -> snr.json (+ snr.png)."""
    from rich.table import Table

    from ..rundir import load_model, model_tag, start_run
    from ..tasks import load_sources
    from .plots import snr_curve

    run_dir = start_run(cfg)
    s, smp, K = cfg.snr, cfg.sampling, cfg.passrate.num_generations
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student, tok, path = load_model(cfg.student.path, cfg.student.preset, cfg.student.init_seed,
                                    cfg.student.dtype, run_dir)
    teacher = load_teacher(cfg.teacher.path, cfg.teacher.dtype, student, tok).to(device)
    student.to(device).eval()  # eval: no dropout; gradients still flow

    pool = load_sources(cfg.data.train, "data.train")[: s.max_problems]
    if len(pool) < 2:
        raise ValueError(f"snr: data.train gives {len(pool)} problem(s); the SNR needs at least 2")
    ledger = Ledger(cfg.ledger.path or run_dir / "ledger.sqlite")
    tag = cfg.ledger.model or model_tag(path)
    counts = ledger.counts(model=tag, stage=cfg.ledger.stage, step=0, problem_ids=[e.id for e in pool])
    todo = [e for e in pool if e.id not in counts]
    if todo:
        params = SamplingParams(temperature=smp.temperature, top_p=smp.top_p, top_k=smp.top_k,
                                max_tokens=smp.max_completion_length, seed=cfg.run.seed)
        counts.update(estimate(student, tok, todo, ledger, K, params, tag,
                               cfg.ledger.stage, step=0, batch_size=smp.batch_size,
                               progress=cfg.run.progress, system_prompt=cfg.student.system_prompt,
                               long_prompts=cfg.student.long_prompts))
    p_hat = np.array([counts[e.id][0] / counts[e.id][1] for e in pool])
    hist = histogram(p_hat, bins=s.bins)
    console.print(f"p̂ of {tag} on {len(pool)} problems ({len(pool) - len(todo)} from the ledger, "
                  f"{len(todo)} estimated with K = {K}, T = {smp.temperature}):")
    console.print(histogram_text(hist))

    system, long, names = cfg.student.system_prompt, cfg.student.long_prompts, [e.id for e in pool]
    room = prompt_room(smp.max_completion_length, student, teacher)
    s_prompts = encode_prompts(tok, [e.prompt for e in pool], system, room, long, names)
    t_prompts = encode_prompts(tok, [cfg.teacher.privileged_template.format(prompt=e.prompt, answer=e.answer)
                                     if cfg.teacher.privileged else e.prompt for e in pool], system, room, long, names)
    who = DEFAULT_RESPONSES[s.loss_type] if s.responses == "auto" else s.responses
    model, prompts, temp = ((teacher, t_prompts, s.teacher_temperature) if who == "teacher"
                            else (student, s_prompts, 1.0))
    ro = sample(model, prompts, SamplingParams(temperature=temp, max_tokens=smp.max_completion_length,
                                               seed=cfg.run.seed + 1),
                eos_token_id=stop_token_ids(student, tok), pad_token_id=tok.pad_token_id,
                batch_size=smp.batch_size)
    responses = [row[:n] or [tok.eos_token_id]  # an empty response scores its EOS, as in distill
                 for row, n in zip(ro.completion_ids.tolist(), ro.lengths.tolist())]

    names, params = select_params(student, s.params)
    n_params = sum(q.numel() for q in params)
    console.print(f"gradients of {s.loss_type} on {who} responses w.r.t. {len(names)} tensors "
                  f"({n_params:,} parameters) matching {s.params!r}")
    if len(pool) * n_params * 4 > MAX_GRAD_BYTES:
        raise ValueError(f"snr: {len(pool)} problems x {n_params:,} parameters is "
                         f"{len(pool) * n_params * 4 / 2**30:.1f} GiB of fp32 gradients (limit "
                         f"{MAX_GRAD_BYTES / 2**30:.0f} GiB); narrow snr.params or lower snr.max_problems")
    kw = loss_kwargs(s.loss_type)
    grads = per_problem_grads(student, teacher, s_prompts, t_prompts, responses, tok.pad_token_id,
                              params, DISTILL_LOSSES[s.loss_type], kw)
    bins = snr_by_bin(grads, p_hat, s.bins)
    overall = cross_problem_snr(grads)
    bell, bell_debiased = is_bell(bins), is_bell(bins, "snr_debiased")

    table = Table(title=f"cross-problem gradient SNR by p̂ bin ({s.loss_type}, {who} responses)")
    for col in ("bin", "problems", "SNR", "SNR debiased", "± 95% (jackknife)", "mean ‖g‖"):
        table.add_column(col, justify="left" if col == "bin" else "right")
    fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    for b in bins:
        ci = b["snr_debiased_ci95"]
        table.add_row(b["label"], str(b["problems"]), fmt(b["snr"]), fmt(b["snr_debiased"]),
                      "-" if ci is None else f"[{ci[0]:.3g}, {ci[1]:.3g}]", fmt(b["mean_grad_norm"]))
    console.print(table)
    console.print(f"overall SNR {overall:.4g}; bell-shaped: {bell} (debiased: {bell_debiased})")

    norms = grads.double().norm(dim=1).tolist()
    result = {"command": "snr", "model": tag, "teacher": cfg.teacher.path,
              "privileged": cfg.teacher.privileged, "loss_type": s.loss_type, "responses": who,
              "loss_kwargs": kw, "params": s.params, "param_names": names, "param_count": n_params,
              "problems": len(pool), "num_generations": K,
              "passrate_temperature": smp.temperature, "teacher_temperature": s.teacher_temperature,
              "ledger": str(ledger.path), "stage": cfg.ledger.stage, "overall_snr": _finite(overall),
              "bell": bell, "bell_debiased": bell_debiased,
              "bins": [{**b, "snr": _finite(b["snr"]), "snr_debiased": _finite(b["snr_debiased"])} for b in bins],
              "p_hat_histogram": hist, "mean_pass_rate": float(p_hat.mean()),
              "per_problem": [{"id": e.id, "p_hat": float(q), "grad_norm": g}
                              for e, q, g in zip(pool, p_hat, norms)]}
    write_json(run_dir / "snr.json", result)
    if snr_curve(bins, run_dir / "snr.png", f"{s.loss_type} on {who} responses"):
        console.print(f"plot: {run_dir / 'snr.png'}")
    return result


def _finite(x):
    """JSON has no inf / nan: write them as None (snr.json), keep the floats otherwise."""
    return x if x is not None and math.isfinite(x) else None

