"""RL log-probs from hidden states in chunks (``paced.rl_losses.chunked_logprobs``) and the policy's
``completion_logprobs``: the same values and gradients as the full (B, R, V) log_softmax, and a
peak of live tensors that stays far below one fp32 copy of those logits.

Shapes: B rows, R completion positions, H hidden size, V vocabulary.
"""
import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from paced.models import _TransformedHead, logits_head, tiny_model
from paced.rl_losses import chunked_logprobs, entropy_from_logits
from paced.teacher import response_hidden
from paced.train.batches import pack
from paced.train.logprobs import completion_hidden, completion_logprobs, ref_logprobs

torch.set_num_threads(1)


def _reference(h, head, y, temperature):
    """The unchunked formula: full fp32 logits, log_softmax, gather; entropy from the same logits."""
    logits = head(h).float() / temperature                                   # (B, R, V)
    return logits.log_softmax(-1).gather(-1, y[..., None]).squeeze(-1), entropy_from_logits(logits)


def _setup(V=37, H=8, B=3, R=5, seed=0, dtype=torch.float32, ops=()):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(H, V, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(V, H, generator=g) * 2)
    head = _TransformedHead(lin, ops) if ops else lin
    h = torch.randn(B, R, H, generator=g).to(dtype).requires_grad_(True)
    y = torch.randint(0, V, (B, R), generator=g)
    return lin, head, h, y


def _grads(out, h, lin, w):
    gh, gw = torch.autograd.grad((out * w).sum(), [h, lin.weight], retain_graph=True)
    return gh, gw


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
@pytest.mark.parametrize("entropy", ["grad", "value", "none"])
def test_values_and_gradients_match_full_logits(chunk, entropy):
    lin, head, h, y = _setup()
    w = torch.linspace(-1, 1, h.shape[0] * h.shape[1]).view(h.shape[:2])     # (B, R) a non-uniform loss
    want_lp, want_ent = _reference(h, head, y, 0.7)
    lp, ent = chunked_logprobs(h, head, y, 0.7, entropy, chunk, checkpoint_above_bytes=0)
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
    for a, b in zip(_grads(lp, h, lin, w), _grads(want_lp, h, lin, w)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if entropy == "none":
        assert ent is None
        return
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    if entropy == "value":
        assert not ent.requires_grad
    else:
        for a, b in zip(_grads(ent, h, lin, w), _grads(want_ent, h, lin, w)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ckpt_bytes", [0, 2 ** 40])
def test_checkpointed_or_not_and_a_soft_capped_head(ckpt_bytes):
    """Gemma-style soft-capping after the head (the logits_head of such a model), temperature 1.3,
    with and without per-chunk checkpointing; log-prob and entropy gradients together."""
    lin, head, h, y = _setup(V=50, ops=(("mul", 2.0), ("softcap", 3.0)))
    want_lp, want_ent = _reference(h, head, y, 1.3)
    lp, ent = chunked_logprobs(h, head, y, 1.3, "grad", 4, checkpoint_above_bytes=ckpt_bytes)
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    w = torch.ones(h.shape[:2])
    for a, b in zip(_grads(lp - 0.1 * ent, h, lin, w), _grads(want_lp - 0.1 * want_ent, h, lin, w)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_hidden_states_and_head():
    """bf16 model: the head runs in bf16, the softmax in fp32 (as the unchunked formula)."""
    lin, head, h, y = _setup(V=64, H=16, dtype=torch.bfloat16)
    want_lp, want_ent = _reference(h, head, y, 1.0)
    lp, ent = chunked_logprobs(h, head, y, 1.0, "grad", 2, checkpoint_above_bytes=0)
    assert lp.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    w = torch.ones(h.shape[:2])
    for a, b in zip(_grads(lp + ent, h, lin, w), _grads(want_lp + want_ent, h, lin, w)):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2)


def test_no_grad_masked_vocabulary_and_empty():
    lin, head, h, y = _setup(V=20)
    masked = lambda x: lin(x).masked_fill(torch.arange(20) >= 15, float("-inf"))  # noqa: E731
    y = y % 15
    with torch.no_grad():
        lp, ent = chunked_logprobs(h, masked, y, 0.9, "value", 4)
        want_lp, want_ent = _reference(h, masked, y, 0.9)
    assert not lp.requires_grad and torch.isfinite(ent).all()
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    lp, ent = chunked_logprobs(h, masked, y, 1.0, "grad", 3, checkpoint_above_bytes=0)
    gh, = torch.autograd.grad((lp + ent).sum(), [h])
    assert torch.isfinite(gh).all()
    lp, ent = chunked_logprobs(h[:, :0], head, y[:, :0], 1.0, "grad")
    assert lp.shape == ent.shape == (3, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs(h, head, y, 1.0, "none", 0)
    with pytest.raises(ValueError, match="entropy"):
        chunked_logprobs(h, head, y, 1.0, "yes")


# ---------------------------------------------------------------------------------------------
# Memory: the peak of live tensors during forward + backward
# ---------------------------------------------------------------------------------------------
class LivePeak(TorchDispatchMode):
    """The peak, over every op run inside it (backward included), of the bytes of all storages
    that ops created inside it and that are still alive."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st.data_ptr() not in self.live or self.live[st.data_ptr()][0].expired():
                    self.live[st.data_ptr()] = (StorageWeakRef(st), st.nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def _peak(fn, h, head, y):
    with LivePeak() as m:
        lp, ent = fn(h, head, y)
        (lp + (ent if ent is not None else 0)).sum().backward()
    return m.peak


def test_peak_memory_stays_far_below_the_full_logits():
    """V = 50,000, B·R = 640 tokens: one fp32 copy of the full logits is 128 MB. The unchunked
    formula's peak is several copies; the chunked one (16 tokens a chunk, checkpointed: a few
    (16, V) chunk tensors and the head's (V, H) gradient) stays under a fifth of one copy, with
    the entropy bonus too, and does not grow with R beyond hidden-sized tensors."""
    V, H = 50_000, 16
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=False)
    full_bytes = 4 * 160 * V * 4                                             # (B, R, V) fp32
    h, y = torch.randn(4, 160, H, requires_grad=True), torch.randint(0, V, (4, 160))
    full = _peak(lambda h, hd, y: _reference(h, hd, y, 1.0), h, head, y)
    assert full > 2 * full_bytes                                             # the tracker sees them
    for entropy in ("none", "grad"):
        chunked = _peak(lambda h, hd, y: chunked_logprobs(h, hd, y, 1.0, entropy, 16), h, head, y)
        assert chunked < full_bytes / 5, (entropy, chunked / 2 ** 20)
    h2, y2 = torch.randn(4, 320, H, requires_grad=True), torch.randint(0, V, (4, 320))
    longer = _peak(lambda h, hd, y: chunked_logprobs(h, hd, y, 1.0, "none", 16), h2, head, y2)
    assert longer < full_bytes / 5
    short = _peak(lambda h, hd, y: chunked_logprobs(h, hd, y, 1.0, "none", 16), h, head, y)
    assert longer - short < 4 * 160 * (H * 4 * 4 + 64)                      # hidden-sized growth only


# ---------------------------------------------------------------------------------------------
# The policy's completion_logprobs on a model
# ---------------------------------------------------------------------------------------------
def _batch():
    prompts, comps = [[5, 6, 7], [8, 9]], [[20, 21, 22, 23], [24, 25]]
    ids, mask, pos, P = pack(prompts, comps, 0)
    return ids, mask, pos, P, ids.shape[1] - P


def _old(model, ids, mask, pos, P, R, temperature):
    """What completion_logprobs computed before: every hidden state, the full (B, R, V) logits."""
    h = response_hidden(model, ids, mask, pos, P, R)
    return _reference(h, logits_head(model), ids[:, P:P + R], temperature)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_completion_logprobs_equal_the_full_formula(checkpointing):
    model = tiny_model("nano", 60, seed=1)
    if checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):                # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    ids, mask, pos, P, R = _batch()
    params = [p for p in model.parameters()]
    if checkpointing:   # HF's layer checkpointing and the head's per-chunk checkpointing together
        lp, ent = chunked_logprobs(completion_hidden(model, ids, mask, pos, P, R), logits_head(model),
                                   ids[:, P:P + R], 0.8, "grad", 3, checkpoint_above_bytes=0)
    else:
        lp, ent = completion_logprobs(model, ids, mask, pos, P, R, 0.8, "grad", chunk_size=3)
    want_lp, want_ent = _old(model, ids, mask, pos, P, R, 0.8)
    torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    m = mask[:, P:].float()
    got = torch.autograd.grad(((lp - 0.01 * ent) * m).sum(), params, allow_unused=True)
    want = torch.autograd.grad(((want_lp - 0.01 * want_ent) * m).sum(), params, allow_unused=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not model.model._forward_hooks                                    # the hook is gone
    torch.testing.assert_close(completion_hidden(model, ids, mask, pos, P, R),
                               response_hidden(model, ids, mask, pos, P, R))


def test_ref_logprobs_and_the_positional_call():
    """rl.py's calls: positional with temperature and entropy, and ref_logprobs under no_grad."""
    model = tiny_model("nano", 60, seed=2).eval()
    ids, mask, pos, P, R = _batch()
    lp, ent = completion_logprobs(model, ids, mask, pos, P, R, 1.0, "value")
    assert lp.requires_grad and not ent.requires_grad
    out = ref_logprobs(model, [(ids, mask, pos, P, R)], 2, R + 1, 1.0)       # (N, L)
    with torch.no_grad():
        want, _ = _old(model, ids, mask, pos, P, R, 1.0)
    torch.testing.assert_close(out[:, :R], want, atol=1e-5, rtol=1e-5)
    assert (out[:, R:] == 0).all()


def test_through_ddp(tmp_path):
    """A DDP-wrapped policy (gloo, one process): the forward goes through the wrapper, the hook
    sits on the wrapped model's backbone, and the gradients equal the plain model's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = tiny_model("nano", 60, seed=3)
    ids, mask, pos, P, R = _batch()
    lp, _ = completion_logprobs(model, ids, mask, pos, P, R, 1.0)
    want = torch.autograd.grad(lp.sum(), list(model.parameters()))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DDP(model)
        lp2, _ = completion_logprobs(ddp, ids, mask, pos, P, R, 1.0)
        lp2.sum().backward()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(lp2, lp)
    for p, g in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
