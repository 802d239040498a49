"""The other commands' roots — ``passrate``, ``eval``, ``ledger``, ``snr``, ``demo``,
``continual`` — and their own sections, each with its cross-field rules as a ``check(key)``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .sections import (DataCfg, DataSource, EngineCfg, EvalCfg, LedgerCfg, ModelCfg, OptimCfg, PassrateCfg,
                       RunCfg, SamplingCfg, TeacherCfg, TrainRunCfg)
from .tools import ConfigError, option
from .trainers import DISTILL_LOSS_TYPES, DistillCfg, RLCfg, StageCfg, TrainCfg, check_adaptive_estimators

WEIGHT_ESTIMATORS = Literal["plugin", "unbiased", "shrunk"]


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
    sampling: SamplingCfg = option(SamplingCfg(), "the eval.n samples per problem (and the greedy one's length)")
    engine: EngineCfg = option(EngineCfg(), "")
    ledger: LedgerCfg = option(LedgerCfg(stage="eval"), "where the sampled verdicts are recorded (at T > 0)")
    run: RunCfg = option(RunCfg(), "")


@dataclass
class LedgerConfig:
    ledger: LedgerCfg = option(LedgerCfg(), "")
    bins: int = option(8, "histogram bins over [0, 1]", min=1)
    estimator: Literal["plain", "beta_mean"] = option("plain", "p-hat estimator")
    weight_alpha: float = option(1.0, "also show PACED's weights w = p^alpha (1-p)^beta of these counts", min=0.0)
    weight_beta: float = option(1.0, "beta of w = p^alpha (1-p)^beta", min=0.0)
    weight_estimator: WEIGHT_ESTIMATORS = option(
        "plugin", "w(p-hat), or the unbiased estimate of p^a(1-p)^b (integer a, b; as "
        "distill.stages[i].weight_estimator)")
    run: RunCfg = option(RunCfg(), "")

    def check(self, key: str) -> None:
        if self.weight_estimator == "unbiased" and (self.weight_alpha % 1 or self.weight_beta % 1):
            raise ConfigError("weight_estimator: 'unbiased' needs integer weight_alpha and weight_beta")


@dataclass
class SNRCfg:
    loss_type: DISTILL_LOSS_TYPES = option("forward_kl", "distillation loss whose gradients are measured")
    responses: Literal["auto", "teacher", "student"] = option(
        "auto", "whose responses (auto: teacher for forward_kl/akl, else student)")
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
    sampling: SamplingCfg = option(SamplingCfg(), "the p-hat rollouts (temperature) and every response's length")
    passrate: PassrateCfg = option(PassrateCfg(), "")
    ledger: LedgerCfg = option(LedgerCfg(stage="snr"), "")
    run: RunCfg = option(RunCfg(dir="runs/snr"), "")

    def check(self, key: str) -> None:
        if self.passrate.adaptive:
            raise ConfigError("passrate.adaptive: paced snr bins problems by p-hat from K = "
                              "passrate.num_generations rollouts each; set passrate.adaptive=false")


FAMILY_SIZES = Literal["nano", "tiny", "small", "medium"]


@dataclass
class DemoCfg:
    """What the demo trains and on which families; the steps themselves are the sections."""
    teacher_preset: FAMILY_SIZES = option("small", "teacher size preset")
    student_preset: FAMILY_SIZES = option("tiny", "student size preset")
    teacher_steps: int = option(2000, "teacher SFT steps", min=1)
    student_steps: int = option(1000, "student SFT steps (fewer: a weaker student)", min=1)
    student_train: list[DataSource] = option([], "the student's SFT sources (empty: data.train, as the teacher)")
    passrate_pool: int = option(240, "training problems whose student pass rates are estimated", min=1)
    distill_families: list[str] = option(["add", "mul1"], "families of data.train in the distillation pool; "
                                         "the other families of data.eval are the forgetting probe")
    distill_target: list[str] = option(["add"], "families of data.eval the distillation target is measured "
                                       "on (empty: distill_families)")
    distill_pool: int = option(1200, "problems in the distillation pool (split over its families)", min=1)
    rl_families: list[str] = option(["add"], "families of data.train (prompts) and data.eval (held-out) of the "
                                    "RL step (empty: skip it)")
    rl_pool: int = option(1000, "prompts in the RL pool (split over rl_families)", min=1)


@dataclass
class DemoConfig:
    demo: DemoCfg = option(DemoCfg(), "")
    data: DataCfg = option(DataCfg(), "")
    optim: OptimCfg = option(OptimCfg(lr=2e-3, warmup_steps=50), "the teacher's and student's SFT")
    train: TrainCfg = option(TrainCfg(per_device_train_batch_size=64), "")
    sampling: SamplingCfg = option(SamplingCfg(max_completion_length=24), "every rollout and held-out sample")
    passrate: PassrateCfg = option(PassrateCfg(), "")
    eval: EvalCfg = option(EvalCfg(n=16), "")
    distill: DistillCfg = option(DistillCfg(
        stages=[StageCfg(name="paced_fkl", loss_type="forward_kl", max_steps=300, weighting="beta")]),
        "the PACED step (0 stages: skip)")
    distill_optim: OptimCfg = option(OptimCfg(lr=1e-4, warmup_steps=20, lr_scheduler_type="constant"), "")
    rl: RLCfg = option(RLCfg(advantage="w_reinforce", max_steps=100, per_device_train_batch_size=128,
                             gradient_accumulation_steps=2, eval_n=16), "the W-REINFORCE step")
    rl_optim: OptimCfg = option(OptimCfg(lr=1e-4, warmup_steps=20, lr_scheduler_type="constant"), "")
    run: TrainRunCfg = option(TrainRunCfg(dir="runs/demo", threads=2, logging_steps=50, save_steps=100), "")
    # threads pinned: another thread count trains other weights, and the printed tables repeat anywhere

    def check(self, key: str) -> None:
        check_adaptive_estimators(self.passrate, self.distill.stages)


# ---------------------------------------------------------------------------------------------
# paced continual: each method's settings under its own name
# ---------------------------------------------------------------------------------------------
CONTINUAL_METHODS = ("sgd", "adam", "ewc", "classp_p1", "classp_p2", "mas")   # = paced.train.continual.METHODS' keys
BASE_OPTIMIZERS = Literal["sgd", "adam"]


@dataclass
class LrArgs:
    lr: float = option(1e-3, "learning rate", min=0.0)


@dataclass
class ClasspArgs:
    lr: float = option(0.1, "learning rate", min=0.0)
    threshold: float = option(0.0, "update an element only where g^2 exceeds this", min=0.0)
    eps: float = option(1e-5, "epsilon inside the root (eps + S)^(1/p)", min=0.0)


@dataclass
class EWCArgs:
    lr: float = option(1e-3, "learning rate of the base optimizer", min=0.0)
    optimizer: BASE_OPTIMIZERS = option("adam", "base optimizer (SGD + a stiff penalty diverges unless "
                                        "lr * lambda * max F < 1)")
    ewc_lambda: float = option(1000.0, "penalty weight (Avalanche's ewc_lambda, no 1/2)", min=0.0)
    mode: Literal["separate", "online"] = option("separate", "one (Fisher, anchor) per task, or online "
                                                 "(decayed sum)")
    decay: float = option(1.0, "online: F <- decay F_old + F_new (must be 1 when separate)", min=0.0)

    def check(self, key: str) -> None:
        if self.mode == "separate" and self.decay != 1.0:
            raise ConfigError(f"{key}.decay: used only with mode 'online' (leave it 1.0)")


@dataclass
class MASArgs:
    lr: float = option(1e-3, "learning rate of the base optimizer", min=0.0)
    optimizer: BASE_OPTIMIZERS = option("adam", "base optimizer")
    mas_lambda: float = option(10.0, "penalty weight (penalty lambda/2 sum Omega (w - w*)^2)", min=0.0)
    alpha: float = option(0.5, "Omega <- alpha Omega + (1 - alpha) Omega_new", min=0.0, max=1.0)


@dataclass
class ContinualCfg:
    benchmark: Literal["permuted", "split"] = option(
        "permuted", "task sequence from sklearn's digits: permuted (a pixel permutation per task, all 10 "
        "classes) or split (disjoint groups of classes)")
    num_tasks: int = option(5, "number of tasks (split: 2 or 5, the 10 classes shared equally)", min=1)
    scenario: Literal["task", "class"] = option(
        "task", "split only: task-incremental (score the task's own classes) or class-incremental (score all 10)")
    methods: list[Literal[CONTINUAL_METHODS]] = option(list(CONTINUAL_METHODS), "methods run, each with its "
                                                       "settings under its own name below")
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
    holdout: Literal["test", "val"] = option(
        "test", "scored split: test (train on train + val) or val (train on train only; for hyper-parameter "
        "search)")
    sgd: LrArgs = option(LrArgs(lr=0.1), "plain SGD, no momentum")
    adam: LrArgs = option(LrArgs(lr=1e-3), "")
    ewc: EWCArgs = option(EWCArgs(), "")
    classp_p1: ClasspArgs = option(ClasspArgs(lr=0.1), "CLASSP with p = 1")
    classp_p2: ClasspArgs = option(ClasspArgs(lr=0.03), "CLASSP with p = 2")
    mas: MASArgs = option(MASArgs(), "")

    def check(self, key: str) -> None:
        """At least one method, none twice; split tasks share the 10 classes equally."""
        if not self.methods:
            raise ConfigError(f"{key}.methods: name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"{key}.methods: a method is listed twice in {self.methods}")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"{key}.seeds: expected distinct seeds >= 0, got {self.seeds}")
        if self.benchmark == "split" and self.num_tasks not in (2, 5):
            raise ConfigError(f"{key}.num_tasks: split-digits shares 10 classes equally among 2 or 5 "
                              f"tasks, got {self.num_tasks}")


@dataclass
class ContinualConfig:
    continual: ContinualCfg = option(ContinualCfg(), "")
    run: RunCfg = option(RunCfg(dir="runs/continual", threads=1, progress=False), "")
