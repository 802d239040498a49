"""RL math for ``paced rl`` (docs/methods.md §2, "NSR / W-REINFORCE", and its GRPO/PPO baselines).

Pure functions over tensors and numbers. Shapes: N rows = G groups (prompts) x n generations,
grouped contiguously (row i belongs to group i // n); T completion positions; ``mask`` (N, T) is
1 on completion tokens (bool, 0/1 or float), completion tokens are left-aligned in each row;
H hidden size, V vocabulary, M = N·T flattened token positions, c tokens of one chunk.

- Advantage rules ``fn(rewards (N,), n, **kw) -> (advantages (N,), keep (N,) bool)``; a row with
  keep False is dropped from the update and from the loss normaliser (callers multiply the mask
  by keep). ``ADVANTAGES`` maps the config names to them.
- Per-token terms (N, T): log-probs and entropy from hidden states in chunks (the policy's
  full (N, T, V) logits never exist), the clipped surrogate, k3 KL; PPO's GAE and value loss.
- Reductions ``LOSS_TYPES`` (TRL's loss_type): one micro-batch's share of the optimizer-batch
  loss, so that the micro-batch losses sum to the full-batch loss.
Advantages and old log-probs are constants of the update: they are detached here.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .losses import _upcast  # x in at least fp32 (bf16/fp16/int/bool -> fp32; fp64 stays fp64)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _groups(rewards: Tensor, n: int, rule: str) -> Tensor:
    """rewards (N,) -> (G, n) in at least fp32; checks that N is a multiple of n."""
    if rewards.dim() != 1:
        raise ValueError(f"{rule}: rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if n < 1 or rewards.numel() % n:
        raise ValueError(f"{rule}: {rewards.numel()} rewards is not a whole number of groups of n={n}")
    return _upcast(rewards).view(-1, n)                          # (G, n)


def _check_unit(rewards: Tensor, rule: str) -> Tensor:
    r = _upcast(rewards)                                         # (N,)
    if not bool(((r >= 0) & (r <= 1)).all()):
        raise ValueError(f"{rule}: rewards must lie in [0, 1] (binary verifier reward), got "
                         f"min {r.min().item():g}, max {r.max().item():g}")
    return r


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask != 0 else exactly 0 (padding values, even inf/NaN, never leak)."""
    return torch.where(mask != 0, x * mask.to(x.dtype), torch.zeros_like(x))


# ---------------------------------------------------------------------------------------------
# Advantage rules: (rewards (N,), n) -> (advantages (N,), keep (N,) bool)
# ---------------------------------------------------------------------------------------------
def std_from_moments(count: float, total: float, total_sq: float) -> float:
    """Unbiased (Bessel) std of values known only by count, Σx and Σx² (summed across
    processes): what ``torch.std`` of the whole batch would give, without gathering it."""
    if count < 2:
        return 0.0
    var = (total_sq - total * total / count) / (count - 1)
    return max(var, 0.0) ** 0.5


def grpo_advantages(rewards: Tensor, n: int, scale_rewards: str = "group",
                    eps: float = 1e-4, batch_std: float | None = None) -> tuple[Tensor, Tensor]:
    """GRPO: A_i = (r_i − mean_group) / (std + eps), every row kept.

    Shao et al., DeepSeekMath (arXiv 2402.03300); TRL's GRPOTrainer convention: std is torch's
    unbiased (Bessel) std; ``scale_rewards`` "group" divides by the group's std, "batch" by the
    std over all N rewards (Dr. GRPO / "Tricks or traps" style), "none" does not divide.
    ``batch_std``: the std of the whole global batch when this process holds only part of it
    (``std_from_moments`` over every process; TRL takes the std of the gathered rewards).
    Deviations: none (n < 2 is refused, as in TRL: the group std is undefined).
    """
    if n < 2:
        raise ValueError(f"grpo_advantages: a group needs n >= 2 generations, got n={n}")
    r = _groups(rewards, n, "grpo_advantages")                   # (G, n)
    adv = r - r.mean(-1, keepdim=True)                           # (G, n)
    if scale_rewards == "group":
        adv = adv / (r.std(-1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        adv = adv / ((r.std() if batch_std is None else batch_std) + eps)
    elif scale_rewards != "none":
        raise ValueError(f"grpo_advantages: scale_rewards must be group, batch or none, got {scale_rewards!r}")
    adv = adv.reshape(-1)                                        # (N,)
    return adv, torch.ones_like(adv, dtype=torch.bool)


def psr_advantages(rewards: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """PSR (positive sample reinforcement): A = r, keep = r > 0.

    Zhu et al., "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning"
    (arXiv 2506.01347): +1 on correct samples, wrong samples dropped. Rewards in [0, 1]; for
    fractional rewards A = r (the row is dropped only at r = 0). ``n`` is unused (no baseline).
    Deviations: none for r ∈ {0, 1}.
    """
    r = _check_unit(_groups(rewards, n, "psr_advantages").reshape(-1), "psr_advantages")  # (N,)
    return r.clone(), r > 0


def nsr_advantages(rewards: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """NSR (negative sample reinforcement): A = −(1 − r), keep = r < 1.

    arXiv 2506.01347: −1 on wrong samples, correct samples dropped; for fractional rewards in
    [0, 1] A = −(1 − r). Deviations: none for r ∈ {0, 1}.
    """
    r = _check_unit(_groups(rewards, n, "nsr_advantages").reshape(-1), "nsr_advantages")  # (N,)
    return -(1.0 - r), r < 1


def w_reinforce_advantages(rewards: Tensor, n: int, lam: float = 0.1) -> tuple[Tensor, Tensor]:
    """W-REINFORCE = λ·PSR + NSR: A = λ r − (1 − r), every row kept.

    arXiv 2506.01347 (λ = 0.1 in the paper; λ = 1 is plain REINFORCE without baseline). For
    r ∈ {0, 1} this is exactly the paper's +λ / −1; fractional rewards in [0, 1] interpolate
    linearly. Dropped rows of PSR/NSR have A = 0, so with λ = 1 these advantages equal
    psr + nsr advantages. Deviations: none for r ∈ {0, 1}.
    """
    r = _check_unit(_groups(rewards, n, "w_reinforce_advantages").reshape(-1), "w_reinforce_advantages")
    adv = lam * r - (1.0 - r)                                    # (N,)
    return adv, torch.ones_like(adv, dtype=torch.bool)


ADVANTAGES = {"grpo": grpo_advantages, "psr": psr_advantages, "nsr": nsr_advantages,
              "w_reinforce": w_reinforce_advantages}


def ragged_advantages(rewards: Tensor, sizes: list[int], rule: str, **kw) -> tuple[Tensor, Tensor]:
    """``ADVANTAGES[rule]`` over groups of unequal size: rewards (N,), N = Σ sizes, group g the
    next ``sizes[g]`` rows; each group's rule on its own rows, concatenated -> (A (N,), keep (N,)).

    For rules that look at one row (psr, nsr, w_reinforce) this equals the equal-size call row for
    row; for grpo each group's mean and std are its own rows' (a group of 16 and one of 4 are each
    centred on their own mean), and ``scale_rewards`` "batch" divides by the std of all N rewards
    (``batch_std`` when given: the global batch's). Frontier prompt selection (paced/train/frontier.py:
    allocate's knapsack, adaptive's rounds) makes such batches. Deviations: none (Knapsack-RL,
    arXiv 2509.25849, and Reinforce-Ada, arXiv 2510.04996, compute GRPO's statistics per prompt
    over the rollouts it got, as here).
    """
    r = _upcast(rewards)                                         # (N,)
    if r.dim() != 1 or sum(sizes) != r.numel() or min(sizes, default=1) < 1:
        raise ValueError(f"ragged_advantages: {r.numel()} rewards do not split into groups of sizes "
                         f"{list(sizes)[:8]}")
    if kw.get("scale_rewards") == "batch" and kw.get("batch_std") is None:
        kw = {**kw, "batch_std": float(r.std())}
    parts = [ADVANTAGES[rule](g, g.numel(), **kw) for g in r.split(list(sizes))]
    if not parts:
        return r.new_zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat([a for a, _ in parts]), torch.cat([k for _, k in parts])


def ragged_has_variance(rewards: Tensor, sizes: list[int]) -> Tensor:
    """(G,) bool: ``group_has_variance`` of groups of unequal ``sizes`` (rows in order)."""
    r = _upcast(rewards)                                         # (N,)
    return torch.tensor([bool((g != g[:1]).any()) for g in r.split(list(sizes))], dtype=torch.bool)


def group_has_variance(rewards: Tensor, n: int) -> Tensor:
    """(G,) bool: True where a group's rewards are not all exactly equal (no float tolerance).

    DAPO's dynamic sampling (Yu et al., arXiv 2503.14476) keeps only these groups: a group with
    equal rewards has zero GRPO advantage everywhere. Deviations: TRL's frac_reward_zero_std
    metric tests std < 1e-6; here equality is exact.
    """
    r = _groups(rewards, n, "group_has_variance")                # (G, n)
    return (r != r[:, :1]).any(-1)                               # (G,)


def reward_zero_std_share(rewards: Tensor, n: int) -> float:
    """Share of groups whose rewards are all equal (``group_has_variance`` False); NaN if G = 0."""
    varied = group_has_variance(rewards, n)                      # (G,)
    return float((~varied).float().mean()) if varied.numel() else float("nan")


# ---------------------------------------------------------------------------------------------
# Per-token terms (N, T)
# ---------------------------------------------------------------------------------------------
def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, epsilon_low: float = 0.2,
                      epsilon_high: float | None = None) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate per token and where the clip is active.

        ρ = exp(logp − old_logp),  ℓ = −min(ρ A, clip(ρ, 1 − ε_low, 1 + ε_high) A)

    Schulman et al., PPO (arXiv 1707.06347); ε_high ≠ ε_low is DAPO's clip-higher; ε_high
    defaults to ε_low. ``advantages`` broadcasts against (N, T): (N, T) per token or (N, 1) per
    sequence. ``clipped`` (N, T) bool marks tokens where the clipped branch is strictly the
    minimum (TRL's clip ratio: ρ > 1 + ε_high with A > 0, or ρ < 1 − ε_low with A < 0); there the
    loss is constant in logp and its gradient is exactly 0. old_logp and A are detached.
    Deviations: none.
    """
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    adv = advantages.detach()
    ratio = torch.exp(logp - old_logp.detach())                  # (N, T)
    unclipped = ratio * adv                                      # (N, T)
    clipped_obj = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + eps_high) * adv  # (N, T)
    clipped = clipped_obj < unclipped                            # (N, T)
    return -torch.where(clipped, clipped_obj, unclipped), clipped


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL estimate k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0 (N, T).

    Schulman, "Approximating KL divergence" (2020): unbiased for KL(π ‖ π_ref) on tokens sampled
    from π, always ≥ 0; TRL's GRPO per-token KL. ref_logp is detached. Deviations: none.
    """
    d = ref_logp.detach() - logp                                 # (N, T)
    return torch.exp(d) - d - 1.0


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) per position, (N, T, V) -> (N, T), in at least fp32.

    −Σ_v p_v log p_v with 0 · log 0 := 0 (-inf logits allowed).
    """
    logp = F.log_softmax(_upcast(logits), dim=-1)                # (N, T, V)
    p = logp.exp()                                               # (N, T, V)
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)          # (N, T)


def chunked_logprobs(hidden: Tensor, head, targets: Tensor, temperature: float = 1.0,
                     entropy: str = "none", chunk_size: int = 512,
                     checkpoint_above_bytes: int = 32 * 2 ** 20) -> tuple[Tensor, Tensor | None]:
    """Per-token log-prob of ``targets`` and optionally the entropy, from final hidden states,
    with O(chunk_size · V) logits memory:

        z = head(h) / temperature (fp32),   log π(y) = z_y − logsumexp(z),
        H(π) = −Σ_v π_v (z_v − logsumexp(z))        (0 · (−inf) := 0)

    hidden (N, T, H); ``head`` maps (1, c, H) -> (1, c, V) (``paced.models.logits_head(model)``);
    targets (N, T) token ids. Returns (logp (N, T), entropy (N, T) or None), both in at least
    fp32. ``entropy``: "grad" (differentiable), "value" (detached, for logging) or "none" (None).
    The M = N·T positions are flattened and processed ``chunk_size`` tokens at a time, so one
    chunk's logits are (c, V) whatever N is; with grad enabled each chunk runs inside
    ``torch.utils.checkpoint`` (non-reentrant): no chunk's logits survive the forward, and the
    backward recomputes them one chunk at a time. The entropy comes from the same chunk's logits
    (no second head pass). Under no_grad nothing is checkpointed (nothing is saved anyway). When
    the whole (M, V) fp32 logits are at most ``checkpoint_above_bytes`` (32 MiB) nothing is
    checkpointed either: the recomputation would cost more than the memory it saves.
    Deviations: the head matmul runs in the head's own dtype and only its output is upcast (as
    ``chunked_token_loss``); the value equals ``log_softmax(head(h).float() / T).gather(targets)``
    and ``entropy_from_logits`` up to float rounding, gradients too.
    """
    if chunk_size < 1:
        raise ValueError(f"chunked_logprobs: chunk_size must be >= 1, got {chunk_size}")
    if entropy not in ("none", "grad", "value"):
        raise ValueError(f"chunked_logprobs: entropy must be none, grad or value, got {entropy!r}")
    N, T, H = hidden.shape
    x, y = hidden.reshape(1, N * T, H), targets.reshape(N * T)   # (1, M, H), (M,)

    def piece(xc: Tensor, yc: Tensor) -> tuple[Tensor, Tensor | None]:
        z = _upcast(head(xc))[0]                                 # (c, V)
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)                         # (c,)
        logp = z.gather(-1, yc[:, None]).squeeze(-1) - lse       # (c,)
        if entropy == "none":
            return logp, None
        with contextlib.nullcontext() if entropy == "grad" else torch.no_grad():
            logq = z - lse[:, None]                              # (c, V)
            p = logq.exp()                                       # (c, V)
            ent = -(p * logq.masked_fill(p == 0, 0.0)).sum(-1)   # (c,)
        return logp, ent

    vocab = getattr(head, "out_features", None)
    if vocab is None:                                            # a plain callable: probe it
        with torch.no_grad():
            vocab = head(x[:, :1]).shape[-1]
    ckpt = torch.is_grad_enabled() and N * T * vocab * 4 > checkpoint_above_bytes
    logps, ents = [], []
    for start in range(0, N * T, chunk_size):
        xc, yc = x[:, start:start + chunk_size], y[start:start + chunk_size]  # (1, c, H), (c,)
        lp, ent = checkpoint(piece, xc, yc, use_reentrant=False) if ckpt else piece(xc, yc)
        logps.append(lp)
        ents.append(ent)
    if not logps:                                                # N·T = 0
        out = _upcast(hidden.new_zeros(N, T))
        return out, (out.clone() if entropy != "none" else None)
    logp = torch.cat(logps).view(N, T)                           # (N, T)
    return logp, (torch.cat(ents).view(N, T) if entropy != "none" else None)


# ---------------------------------------------------------------------------------------------
# Loss reductions (TRL loss_type). per_token/mask: one micro-batch; num_sequences/num_tokens:
# kept sequences/tokens of the whole optimizer batch. Summed over micro-batches = batch loss.
# Groups of unequal size (frontier selection's allocate / adaptive): no reduction knows groups.
# Every kept row counts once, so a group's share of the loss is proportional to its rows: grpo
# gives each row 1 / num_sequences (a group of 16 rows weighs 4x a group of 4), dapo each token
# 1 / num_tokens and dr_grpo 1 / (num_sequences · max_completion_length) (a group weighs its
# completion tokens), bnpo each token of a micro-batch 1 / its tokens. A group that earned more
# rollouts (the knapsack's choice) thus moves the policy more, and its advantages, averaged over
# more rows, are less noisy.
# ---------------------------------------------------------------------------------------------
def loss_grpo(per_token: Tensor, mask: Tensor, *, num_sequences: float, num_tokens: float,
              max_completion_length: int, num_micro_batches: int) -> Tensor:
    """Σ_i (Σ_t ℓ m / max(Σ_t m, 1)) / num_sequences: each sequence's token mean, then the mean
    over the batch's kept sequences (GRPO paper / TRL "grpo"). Micro-batch invariant."""
    m = mask.to(per_token.dtype)                                 # (b, T)
    per_seq = _masked(per_token, m).sum(-1) / m.sum(-1).clamp(min=1)  # (b,)
    return per_seq.sum() / max(num_sequences, 1)


def loss_bnpo(per_token: Tensor, mask: Tensor, *, num_sequences: float, num_tokens: float,
              max_completion_length: int, num_micro_batches: int) -> Tensor:
    """(Σ ℓ m / max(Σ m, 1)) / num_micro_batches: token mean within this micro-batch (TRL
    "bnpo"); by definition NOT micro-batch invariant."""
    m = mask.to(per_token.dtype)                                 # (b, T)
    return _masked(per_token, m).sum() / m.sum().clamp(min=1) / max(num_micro_batches, 1)


def loss_dr_grpo(per_token: Tensor, mask: Tensor, *, num_sequences: float, num_tokens: float,
                 max_completion_length: int, num_micro_batches: int) -> Tensor:
    """Σ ℓ m / (num_sequences · max_completion_length): Dr. GRPO (Liu et al., arXiv 2503.20783),
    a length-independent constant normaliser. Micro-batch invariant."""
    m = mask.to(per_token.dtype)                                 # (b, T)
    return _masked(per_token, m).sum() / (max(num_sequences, 1) * max_completion_length)


def loss_dapo(per_token: Tensor, mask: Tensor, *, num_sequences: float, num_tokens: float,
              max_completion_length: int, num_micro_batches: int) -> Tensor:
    """Σ ℓ m / max(num_tokens, 1): token mean over the whole batch (DAPO, arXiv 2503.14476;
    the loss of docs/methods.md §2). Micro-batch invariant."""
    m = mask.to(per_token.dtype)                                 # (b, T)
    return _masked(per_token, m).sum() / max(num_tokens, 1)


LOSS_TYPES = {"grpo": loss_grpo, "bnpo": loss_bnpo, "dr_grpo": loss_dr_grpo, "dapo": loss_dapo}


# ---------------------------------------------------------------------------------------------
# PPO: terminal reward, GAE, value loss, whitening
# ---------------------------------------------------------------------------------------------
def terminal_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """(N,) sequence rewards -> (N, T) with each reward on its row's last completion token (rows
    without completion tokens get all zeros)."""
    T = mask.shape[-1]
    pos = torch.arange(T, device=mask.device).expand_as(mask)    # (N, T)
    last = torch.where(mask != 0, pos, torch.full_like(pos, -1)).max(-1).values  # (N,)
    out = torch.zeros(mask.shape, dtype=_upcast(rewards).dtype, device=mask.device)  # (N, T)
    rows = (last >= 0).nonzero().squeeze(-1)                     # (N',)
    out[rows, last[rows]] = _upcast(rewards).to(out.device)[rows]
    return out


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation per token (N, T) x 2: (advantages, returns).

        δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γ λ A_{t+1},  R_t = A_t + V_t

    Schulman et al. (arXiv 1506.02438). The episode ends at each row's last completion token:
    V and A beyond it count as 0. Positions outside the mask get A = R = 0. Computed without
    gradient (values are the old critic's). Deviations: none (γ = λ = 1 in arXiv 2506.01347).
    """
    with torch.no_grad():
        m = (mask != 0)                                          # (N, T)
        zero = torch.zeros_like(_upcast(values))
        v = torch.where(m, _upcast(values), zero)                # (N, T)
        r = torch.where(m, _upcast(rewards).to(v), zero)         # (N, T)
        adv = torch.zeros_like(v)                                # (N, T)
        next_v = next_a = v.new_zeros(v.shape[0])                # (N,)
        for t in range(v.shape[1] - 1, -1, -1):
            delta = r[:, t] + gamma * next_v - v[:, t]           # (N,)
            a = torch.where(m[:, t], delta + gamma * lam * next_a, torch.zeros_like(delta))
            adv[:, t] = a
            next_v, next_a = v[:, t], a
        return adv, torch.where(m, adv + v, zero)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range: float = 0.2) -> Tensor:
    """PPO clipped value loss per token (N, T), 0 outside the mask:

        ½ max((V − R)², (clip(V, V_old − c, V_old + c) − R)²)

    (TRL's PPOTrainer / OpenAI baselines). old_values and returns are detached.
    """
    old, ret = old_values.detach(), returns.detach()
    clipped = torch.max(torch.min(values, old + clip_range), old - clip_range)  # (N, T)
    loss = 0.5 * torch.max((values - ret) ** 2, (clipped - ret) ** 2)          # (N, T)
    return torch.where(mask != 0, loss, torch.zeros_like(loss))


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the masked entries (unbiased var, as TRL's
    masked_whiten), 0 outside the mask. Fewer than 2 masked entries: only centred."""
    m = (mask != 0)                                              # (N, T)
    xs = _upcast(x)
    k = m.sum()
    mean = torch.where(m, xs, torch.zeros_like(xs)).sum() / k.clamp(min=1)
    centred = torch.where(m, xs - mean, torch.zeros_like(xs))    # (N, T)
    if k < 2:
        return centred
    var = (centred ** 2).sum() / (k - 1)
    return centred * torch.rsqrt(var + eps)


def engine_terms(trainer_logp, engine_logp, mask, cap: float):
    """TRL's truncated importance sampling against the rollout engine's numerics: the detached
    per-token weight min(exp(trainer − engine), cap) (1 where ``mask`` is 0), and
    |engine − trainer| over the ``mask`` tokens (its max, sum and token count, for the log)."""
    d = (trainer_logp.detach() - engine_logp) * mask                         # (b, R)
    w = torch.where(mask > 0, d.exp().clamp(max=cap), torch.ones_like(d))
    return w.detach(), {"engine/logprob_diff_max": float(d.abs().max()) if d.numel() else 0.0,
                        "engine/logprob_diff_sum": float(d.abs().sum()), "engine/logprob_tokens": float(mask.sum())}
