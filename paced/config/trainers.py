"""The trainers' roots — ``paced sft``, ``paced distill``, ``paced rl`` — and their own sections,
each with its cross-field rules as a ``check(key)`` method next to its fields."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .sections import (DataCfg, EngineCfg, LedgerCfg, ModelCfg, OptimCfg, PassrateCfg, RegularizerCfg,
                       SamplingCfg, TeacherCfg, TrainRunCfg)
from .tools import ConfigError, option

DISTILL_LOSS_TYPES = Literal["forward_kl", "reverse_kl", "jsd", "akl"]


def default_responses(loss_type: str) -> str:
    """Whose responses a distillation loss trains on by default (losses.DEFAULT_RESPONSES)."""
    return "teacher" if loss_type in ("forward_kl", "akl") else "student"


@dataclass
class TrainCfg:
    max_steps: int = option(100, "optimizer steps", min=1)
    per_device_train_batch_size: int = option(32, "sequences per micro-batch per process", min=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step", min=1)
    max_length: int = option(128, "truncate prompt+response to this many tokens", min=8)
    privileged_share: float = option(0.0, "share of examples whose prompt also shows the answer "
                                     "(privileged_template): teaches a model to use privileged context, "
                                     "for teacher: self with teacher.privileged", min=0.0, max=1.0)
    privileged_template: str = option("{prompt}(answer {answer})", "prompt of the privileged examples "
                                      "({prompt}, {answer}, {hint}); the same default as "
                                      "teacher.privileged_template; '{prompt}({hint})' = rl.guide.hint_template")
    privileged_extra: bool = option(False, "privileged examples are extra copies next to the plain ones "
                                    "(the plain task keeps all its examples) instead of replacing them")


@dataclass
class StageCfg:
    name: str = option("stage", "stage name (ledger stage tag, metrics)")
    loss_type: DISTILL_LOSS_TYPES = option("forward_kl", "token-level loss")
    max_steps: int = option(100, "optimizer steps in this stage", min=1)
    responses: Literal["auto", "teacher", "student"] = option(
        "auto", "whose responses: auto = teacher for forward_kl/akl, student for reverse_kl/jsd")
    weighting: Literal["uniform", "hard_filter", "beta"] = option("beta", "per-problem weight from p-hat")
    weight_alpha: float = option(1.0, "alpha of w = p^alpha (1-p)^beta", min=0.0)
    weight_beta: float = option(1.0, "beta of w = p^alpha (1-p)^beta", min=0.0)
    weight_estimator: Literal["plugin", "unbiased", "shrunk"] = option(
        "plugin", "w(p-hat), the unbiased estimate of p^a(1-p)^b (integer a, b), or shrunk: its posterior mean "
        "under a Beta prior fitted to the pool (empirical Bayes; never 0, so every problem is trained on)")
    shrink_by: Literal["pool", "source", "difficulty", "source_difficulty"] = option(
        "pool", "shrunk: fit one prior to the whole pool, or one to each source / difficulty / (source, "
        "difficulty) group of it (groups under 8 problems take the pool's)")
    normalize: Literal["sum", "count"] = option("sum", "batch loss = sum w l / sum w (sum) or / N (count)")
    sample_by_weight: bool = option(False, "draw batches with probability proportional to w (then w = 1)")
    reestimate_every: int = option(0, "re-estimate p-hat every E steps (0 = once, at the stage start)", min=0)
    online_passrate: bool = option(False, "student-response stages: verify the responses each step samples "
                                   "anyway and re-estimate p-hat from the stage-start estimate plus those "
                                   "(no fresh rollouts after the first)")
    passrate_source: Literal["rollouts", "ledger"] = option(
        "rollouts", "where p-hat comes from: K fresh rollouts per problem (rollouts), or the rows the ledger "
        "already holds for this student and its parents (ledger.parent), weighed by ledger.recency; problems "
        "with less than one trial on record get K fresh rollouts (or, passrate.adaptive, the sequential estimate)")
    beta: float = option(0.5, "jsd: mixing (0 = forward KL, 1 = reverse KL; TRL GKD convention)", min=0.0, max=1.0)
    temperature: float = option(1.0, "softmax temperature inside the KL", min=1e-6)
    akl_mu: float = option(0.5, "akl: teacher mass of the head", min=0.0, max=1.0)

    def check(self, key: str) -> None:
        if self.weight_estimator == "unbiased" and (self.weighting != "beta" or self.weight_alpha % 1
                                                    or self.weight_beta % 1):
            raise ConfigError(f"{key}.weight_estimator: 'unbiased' needs weighting 'beta' with integer "
                              f"weight_alpha and weight_beta")
        if self.weight_estimator == "shrunk" and self.weighting != "beta":
            raise ConfigError(f"{key}.weight_estimator: 'shrunk' is a posterior mean of p^alpha (1-p)^beta; it "
                              f"needs weighting 'beta'")
        if self.shrink_by != "pool" and self.weight_estimator != "shrunk":
            raise ConfigError(f"{key}.shrink_by: {self.shrink_by!r} groups the prior of weight_estimator 'shrunk'; "
                              f"set weight_estimator=shrunk or drop it")
        responses = self.responses if self.responses != "auto" else default_responses(self.loss_type)
        if self.weighting == "uniform" and (self.online_passrate or self.reestimate_every):
            raise ConfigError(f"{key}.weighting: 'uniform' uses no p̂, so online_passrate and reestimate_every "
                              f"would only spend rollouts; drop them or choose beta / hard_filter")
        if self.passrate_source == "ledger" and (self.weight_estimator != "plugin" or self.weighting == "uniform"):
            raise ConfigError(f"{key}.passrate_source: 'ledger' gives discounted (fractional) counts: it needs "
                              f"weight_estimator 'plugin' and a weighting that uses p-hat (beta or hard_filter)")
        if self.online_passrate and not self.reestimate_every:
            raise ConfigError(f"{key}.online_passrate: the online rows change the weights only when p̂ is "
                              f"re-estimated; set reestimate_every > 0")
        if self.online_passrate and responses != "student":
            raise ConfigError(f"{key}.online_passrate: needs a stage on student responses (reverse_kl / jsd, "
                              f"or responses: student), not {self.loss_type} on {responses}'s")


@dataclass
class DistillCfg:
    stages: list[StageCfg] = option([StageCfg()], "the schedule: a list of stages run in order")
    per_device_train_batch_size: int = option(32, "problems per optimizer step", min=1)
    teacher_temperature: float = option(0.0, "teacher response sampling (0 = greedy, cached per problem)", min=0.0)
    student_temperature: float = option(1.0, "on-policy student response sampling", min=0.0)
    chunk_size: int = option(256, "response positions per logits chunk (memory bound)", min=1)
    teacher_cache_mib: int = option(1024, "cache what the frozen teacher recomputes: hidden states on greedy "
                                    "teacher responses, else prompt KV caches; MiB per cache, 0 = off", min=0)
    eval_n: int = option(8, "samples per held-out problem, before and after (mean@n)", min=1)


@dataclass
class GuideCfg:
    """Guide (docs/methods.md §3, paced/guide.py)."""
    enabled: bool = option(False, "when all num_generations rollouts of a prompt fail, roll out again from the "
                           "hinted prompt, replace the group, and train the plain-prompt policy through "
                           "r = pi(o|q) / pi_old(o|q,h)")
    hint_template: str = option("{prompt}({hint})", "the hinted prompt ({prompt}, {hint}; '{hint}' alone when "
                                "the data's hint is a whole alternative prompt)")
    shaping: Literal["percentile", "constant", "power", "none"] = option(
        "percentile", "shaping of the hinted ratio: percentile r/(r+q-quantile), constant r/(r+gamma), "
        "power r^power, none")
    quantile: float = option(0.9, "percentile: gamma = this quantile of the micro-batch's hinted ratios",
                             min=0.0, max=1.0)
    gamma: float = option(1.0, "constant: gamma", min=1e-4)
    power: float = option(0.5, "power: exponent kappa", min=1e-6, max=1.0)

    def check(self, key: str) -> None:
        from ..guide import check_hint_template
        if self.enabled:
            try:
                check_hint_template(self.hint_template)
            except ValueError as e:
                raise ConfigError(f"{key}.hint_template: {e}") from None


@dataclass
class PPOCfg:
    """PPO's critic and GAE (rl.advantage ppo; TRL's PPOConfig names)."""
    vf_coef: float = option(0.1, "value-loss coefficient", min=0.0)
    cliprange_value: float = option(0.2, "clip range of the value update", min=0.0)
    gamma: float = option(1.0, "discount", min=0.0, max=1.0)
    lam: float = option(1.0, "GAE lambda", min=0.0, max=1.0)
    whiten_advantages: bool = option(True, "normalise advantages over the batch's tokens")


@dataclass
class RLCfg:
    advantage: Literal["grpo", "psr", "nsr", "w_reinforce", "ppo"] = option(
        "w_reinforce", "advantage rule (paced/rl_losses.py ADVANTAGES): grpo, psr, nsr, w_reinforce, or ppo "
        "(a critic and GAE: rl.ppo)")
    w_reinforce_lambda: float = option(0.1, "w_reinforce: weight lambda of the positive samples (+lambda / -1)",
                                       min=0.0)
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group", "grpo: divide by the group std, the batch std, or not")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = option(
        "dapo", "surrogate normalisation (TRL's): grpo (per-sequence mean), bnpo (token mean per micro-batch), "
        "dr_grpo (/ batch x max_completion_length), dapo (token mean over the batch)")
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
    dynamic_sampling: bool = option(False, "drop groups whose rewards are all exactly equal and sample "
                                    "more prompts until the batch is full or max_sampling_rounds is spent")
    max_sampling_rounds: int = option(4, "dynamic sampling: rollout rounds per step at most (the budget)", min=1)
    max_rollouts: int = option(0, "budget: stop after the step in which the completions sampled so far "
                               "(all rounds, hinted ones included, all processes) reach this (0 = max_steps only)",
                               min=0)
    guide: GuideCfg = option(GuideCfg(), "")
    ppo: PPOCfg = option(PPOCfg(), "")
    vllm_importance_sampling_correction: bool = option(False, "engine.backend vllm: weight each token's loss "
                                                       "by min(pi_trainer / pi_engine, cap) of the sampled "
                                                       "token (truncated importance sampling, as TRL)")
    vllm_importance_sampling_cap: float = option(2.0, "the truncation cap of that ratio", min=1.0)
    reward_funcs: list[str] = option(["verifier"], "reward functions: 'verifier' (the task's checker) or "
                                     "'module:function' / 'file.py:function' with TRL's signature")
    reward_weights: list[float] = option([], "one weight per reward function (default 1 each)")
    prompt_selection: Literal["uniform", "hard_filter", "beta", "skip", "allocate", "adaptive", "frontier"] = option(
        "uniform", "which prompts a step rolls out, p-hat from the ledger (paced/train/frontier.py): uniform "
        "(the seeded stream), hard_filter / beta (drawn by w(p-hat); untried: p-hat = 0.5), skip (the stream "
        "minus prompts whose group would all agree), allocate (a knapsack spreads rollout_budget over "
        "allocate_prompts), adaptive (rounds of adaptive_round until both outcomes or adaptive_cap), frontier (by "
        "the posterior: likely all-pass skipped, likely all-fail to Guide's hinted rollouts or skipped without "
        "a hint, the rest trained; needs guide.enabled)")
    weight_alpha: float = option(1.0, "prompt_selection beta: alpha of p^alpha (1-p)^beta", min=0.0)
    weight_beta: float = option(1.0, "prompt_selection beta: beta of p^alpha (1-p)^beta", min=0.0)
    skip_threshold: float = option(0.5, "skip: leave out a prompt when P(its num_generations rewards all agree) "
                                   "under its posterior is at least this (0.5: after one all-agree group, whose "
                                   "P is (G+1)/(2G+1) under the uniform prior)", min=0.0, max=1.0)
    skip_readmit: float = option(0.1, "skip: probability that a prompt to leave out is rolled out anyway",
                                 min=0.0, max=1.0)
    rollout_budget: int = option(0, "allocate: rollouts per process per step (0 = per_device_train_batch_size x "
                                 "gradient_accumulation_steps, a uniform step's)", min=0, max=65_536)
    allocate_prompts: int = option(0, "allocate: candidate prompts per process per step (0 = twice a uniform "
                                   "step's)", min=0, max=65_536)
    min_group: int = option(2, "allocate: fewest rollouts of a prompt that gets any", min=2, max=4_096)
    max_group: int = option(0, "allocate: most rollouts of one prompt (0 = 2 x num_generations)", min=0, max=4_096)
    adaptive_round: int = option(4, "adaptive: rollouts per prompt per round", min=1, max=4_096)
    adaptive_cap: int = option(32, "adaptive: most rollouts of one prompt in a step (a multiple of adaptive_round)",
                               min=2, max=4_096)
    eval_n: int = option(8, "samples per held-out problem (data.eval) before, after and every eval_steps", min=1)
    eval_steps: int = option(0, "held-out evaluation every N steps into metrics.jsonl (0 = before and after only)",
                             min=0)

    def check(self, key: str) -> None:
        """Whole groups per micro-batch; a reward weight per function."""
        if self.per_device_train_batch_size % self.num_generations:
            raise ConfigError(f"{key}.per_device_train_batch_size: {self.per_device_train_batch_size} completions "
                              f"is not a multiple of {key}.num_generations={self.num_generations} (whole groups "
                              f"per micro-batch)")
        if self.advantage == "grpo" and self.num_generations < 2:
            raise ConfigError(f"{key}.num_generations: grpo compares completions within a group; use >= 2")
        if not self.reward_funcs:
            raise ConfigError(f"{key}.reward_funcs: name at least one reward function, e.g. ['verifier']")
        for i, spec in enumerate(self.reward_funcs):
            if spec != "verifier" and ":" not in spec:
                raise ConfigError(f"{key}.reward_funcs[{i}]: {spec!r} is neither 'verifier' nor "
                                  f"'module:function' / 'path/file.py:function'")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(f"{key}.reward_weights: {len(self.reward_weights)} weights for "
                              f"{len(self.reward_funcs)} reward functions")
        self.check_selection(key)

    def check_selection(self, key: str) -> None:
        """prompt_selection's knobs: an allocate budget the knapsack can spend exactly, an adaptive
        cap in whole rounds; no Guide or dynamic sampling with unequal groups."""
        sel = self.prompt_selection
        if sel == "frontier" and not self.guide.enabled:
            raise ConfigError(f"{key}.prompt_selection: frontier routes likely all-fail prompts to Guide's hinted "
                              f"rollouts; set {key}.guide.enabled=true (or use skip)")
        if sel in ("allocate", "adaptive"):
            if self.guide.enabled:
                raise ConfigError(f"{key}.prompt_selection: {sel} gives groups of unequal size; {key}.guide replaces "
                                  f"a failed group of num_generations: use uniform / skip / hard_filter / beta "
                                  f"with guide")
            if self.dynamic_sampling:
                raise ConfigError(f"{key}.prompt_selection: {sel} decides each prompt's rollouts itself; drop "
                                  f"{key}.dynamic_sampling (it would resample what {sel} already spent)")
        if sel == "allocate":
            local = self.per_device_train_batch_size * self.gradient_accumulation_steps // self.num_generations
            budget = self.rollout_budget or local * self.num_generations
            n, hi = self.allocate_prompts or 2 * local, self.max_group or 2 * self.num_generations
            if self.min_group > hi:
                raise ConfigError(f"{key}.min_group: {self.min_group} is more than max_group {hi}")
            m = -(-budget // hi)          # the fewest groups that can hold the budget
            if m > n or m * self.min_group > budget:
                raise ConfigError(f"{key}.rollout_budget: {budget} rollouts cannot be split exactly into groups of "
                                  f"{self.min_group}..{hi} over {n} candidate prompts (allocate_prompts)")
        if sel == "adaptive" and self.adaptive_cap % self.adaptive_round:
            raise ConfigError(f"{key}.adaptive_cap: {self.adaptive_cap} is not a multiple of adaptive_round "
                              f"{self.adaptive_round}")


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
    run: TrainRunCfg = option(TrainRunCfg(), "")


@dataclass
class DistillConfig:
    student: ModelCfg = option(ModelCfg(), "")
    teacher: TeacherCfg = option(TeacherCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    distill: DistillCfg = option(DistillCfg(), "")
    sampling: SamplingCfg = option(SamplingCfg(batch_size=512), "the student's p-hat rollouts and held-out "
                                   "samples (temperature), every generated response (max_completion_length)")
    passrate: PassrateCfg = option(PassrateCfg(), "")
    engine: EngineCfg = option(EngineCfg(), "")
    optim: OptimCfg = option(OptimCfg(lr=3e-4), "")
    regularizer: RegularizerCfg = option(RegularizerCfg(), "")
    ledger: LedgerCfg = option(LedgerCfg(stage="distill"), "")
    run: TrainRunCfg = option(TrainRunCfg(dir="runs/distill"), "")

    def check(self, key: str) -> None:
        check_adaptive_estimators(self.passrate, self.distill.stages)


def check_adaptive_estimators(passrate: PassrateCfg, stages: list[StageCfg]) -> None:
    """passrate.adaptive with a stage's 'unbiased' weight estimator: an error (the distill and demo roots)."""
    for i, st in enumerate(stages):
        if passrate.adaptive and st.weight_estimator == "unbiased":
            raise ConfigError(f"distill.stages[{i}].weight_estimator: 'unbiased' is unbiased for a fixed K "
                              f"only; with passrate.adaptive the trials depend on the outcomes, use 'plugin'")


@dataclass
class RLConfig:
    policy: ModelCfg = option(ModelCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    rl: RLCfg = option(RLCfg(), "")
    sampling: SamplingCfg = option(SamplingCfg(batch_size=512), "the rollouts and held-out samples")
    engine: EngineCfg = option(EngineCfg(), "")
    optim: OptimCfg = option(OptimCfg(lr=1e-5, warmup_steps=0, lr_scheduler_type="constant"), "")
    regularizer: RegularizerCfg = option(RegularizerCfg(), "")
    ledger: LedgerCfg = option(LedgerCfg(stage="rl"), "")
    run: TrainRunCfg = option(TrainRunCfg(dir="runs/rl"), "")

    def check(self, key: str) -> None:
        from ..tasks.synthetic import FAMILIES
        if not self.data.train:
            raise ConfigError("data.train: paced rl needs training prompts")
        if self.rl.guide.enabled and all(s.source in FAMILIES and s.hint_level == 0 for s in self.data.train):
            raise ConfigError("data.train: every source has hint_level 0 (no hints); rl.guide needs hints: "
                              "hint_level 1..3, or a file with a hint field")
