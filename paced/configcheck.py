"""Cross-field config rules: what one field's type and range cannot say (``load_config`` runs
them after building the dataclasses of paced/config.py, before any model loads). A rule finds its
sections by name (``cfg.rl``, ``cfg.eval``): this module imports nothing of paced's but
configtools and the task helpers, so paced/config.py can call it."""
from __future__ import annotations

import dataclasses
import os

from .configtools import ConfigError


# Sizes past these are refused before any work (a typo like 10**12 would hang or exhaust memory):
# fields whose name ends in one of the keys, anywhere in the config.
SIZE_CAPS = {"batch_size": 65_536, "num_generations": 4_096, "max_completion_length": 131_072,
             "max_length": 131_072, "max_prompt_length": 131_072, "eval_n": 4_096,
             "gradient_accumulation_steps": 65_536}
STEP_SEQUENCES_CAP = 1_048_576  # per_device_train_batch_size x gradient_accumulation_steps, one step
SYNTHETIC_N_CAP = 1_000_000     # problems one synthetic source may generate
EVAL_N_CAP = 4_096              # samples per problem in eval / passrate


def _check_sizes(obj, prefix: str = "") -> None:
    if dataclasses.is_dataclass(obj):
        per, acc = getattr(obj, "per_device_train_batch_size", 1), getattr(obj, "gradient_accumulation_steps", 1)
        if isinstance(per, int) and isinstance(acc, int) and per * acc > STEP_SEQUENCES_CAP:
            raise ConfigError(f"{prefix}gradient_accumulation_steps: {per:,} x {acc:,} sequences per step is "
                              f"more than paced accepts ({STEP_SEQUENCES_CAP:,}); a typo?")
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if isinstance(value, int) and not isinstance(value, bool):
                cap = next((c for end, c in SIZE_CAPS.items() if f.name.endswith(end)), None)
                if key in ("eval.n", "passrate.num_generations"):
                    cap = EVAL_N_CAP
                if cap is not None and value > cap:
                    raise ConfigError(f"{key}: {value:,} is more than paced accepts ({cap:,}); "
                                      f"a typo? (sizes past this cannot fit in memory)")
                if key == "run.threads":
                    cores = os.cpu_count() or 1
                    if value > 4 * cores:
                        raise ConfigError(f"run.threads: {value:,} threads on a machine with {cores} "
                                          f"cores; use at most {4 * cores} (0 = auto)")
            _check_sizes(value, key + ".")
    elif isinstance(obj, list):
        for i, x in enumerate(obj):
            _check_sizes(x, f"{prefix[:-1]}[{i}].")
            src_n = getattr(x, "n", None)
            if getattr(x, "source", None) is not None and isinstance(src_n, int) and src_n > SYNTHETIC_N_CAP:
                raise ConfigError(f"{prefix[:-1]}[{i}].n: {src_n:,} problems; a source holds at most "
                                  f"{SYNTHETIC_N_CAP:,}")


def check(cfg) -> None:
    """Cross-field rules that a single field's range cannot express."""
    _check_sizes(cfg)
    for section, splits in (("data", ("train", "eval", "forgetting")), ("regularizer", ("fisher_data",))):
        data = getattr(cfg, section, None)
        for split in splits if data else ():
            for i, src in enumerate(getattr(data, split)):
                key = f"{section}.{split}[{i}]"
                if len(src.difficulty) not in (1, 2) or min(src.difficulty) < 0:
                    raise ConfigError(f"{key}.difficulty: expected [lo, hi] or one int >= 0")
                if len(src.difficulty) == 2 and src.difficulty[0] > src.difficulty[1]:
                    raise ConfigError(f"{key}.difficulty: lo {src.difficulty[0]} > hi {src.difficulty[1]}")
                _check_answer_format(key, src)
    for name in ("model", "student", "policy"):
        model = getattr(cfg, name, None)
        if model is not None and model.path is None and model.preset is None:
            raise ConfigError(f"{name}.path: set a model directory (or {name}.preset for a tiny model)")
    teacher = getattr(cfg, "teacher", None)
    if teacher is not None and not teacher.path:
        raise ConfigError("teacher.path: set a teacher model directory, or 'self' for self-distillation")
    if getattr(cfg, "weight_estimator", None) == "unbiased" and (cfg.weight_alpha % 1 or cfg.weight_beta % 1):
        raise ConfigError("weight_estimator: 'unbiased' needs integer weight_alpha and weight_beta")
    for i, st in enumerate(getattr(getattr(cfg, "distill", None), "stages", [])):
        if st.weight_estimator == "unbiased" and (st.weighting != "beta" or st.weight_alpha % 1
                                                   or st.weight_beta % 1):
            raise ConfigError(f"distill.stages[{i}].weight_estimator: 'unbiased' needs weighting "
                              f"'beta' with integer weight_alpha and weight_beta")
        responses = st.responses if st.responses != "auto" else \
            ("teacher" if st.loss_type in ("forward_kl", "akl") else "student")
        if st.weighting == "uniform" and (st.online_passrate or st.reestimate_every):
            raise ConfigError(f"distill.stages[{i}].weighting: 'uniform' uses no p̂, so online_passrate and "
                              f"reestimate_every would only spend rollouts; drop them or choose beta / hard_filter")
        if st.online_passrate and not st.reestimate_every:
            raise ConfigError(f"distill.stages[{i}].online_passrate: the online rows change the weights only "
                              f"when p̂ is re-estimated; set reestimate_every > 0")
        if st.online_passrate and responses != "student":
            raise ConfigError(f"distill.stages[{i}].online_passrate: needs a stage on student responses "
                              f"(reverse_kl / jsd, or responses: student), not {st.loss_type} on {responses}'s")
    reg = getattr(cfg, "regularizer", None)
    if reg is not None and reg.name == "ewc" and not reg.fisher_data:
        raise ConfigError("regularizer.fisher_data: regularizer.name 'ewc' needs the data whose Fisher "
                          "anchors the weights, e.g. regularizer.fisher_data=[{source: add, n: 512}]")
    ev = getattr(cfg, "eval", None)
    if ev is not None and hasattr(ev, "ks") and any(k < 1 or k > ev.n for k in ev.ks):
        raise ConfigError(f"eval.ks: every k must lie in [1, eval.n={ev.n}], got {ev.ks}")
    root_rules = ROOT_RULES.get(type(cfg).__name__)
    if root_rules is not None:
        root_rules(cfg)
    for tracker in getattr(getattr(cfg, "run", None), "report_to", []):
        if tracker not in ("tensorboard", "wandb", "trackio"):
            raise ConfigError(f"run.report_to: unknown tracker {tracker!r}; "
                              "choose tensorboard, wandb or trackio")


def _check_answer_format(key: str, src) -> None:
    """A data source's answer_format / answer_regex / prompt_template / style agree."""
    import re

    from .guide import template_fields
    from .tasks.formats import compile_regex
    from .tasks.synthetic import FAMILIES
    if src.answer_format == "regex" and not src.answer_regex:
        raise ConfigError(f"{key}.answer_regex: answer_format 'regex' needs a pattern, e.g. "
                          f"answer_regex='answer: (-?[0-9]+)'")
    if src.answer_regex is not None and src.answer_format != "regex":
        raise ConfigError(f"{key}.answer_regex: used only with answer_format 'regex' "
                          f"(answer_format is {src.answer_format!r})")
    if src.answer_regex is not None:
        try:
            compile_regex(src.answer_regex)
        except (re.error, OverflowError, RecursionError) as e:   # 'a{99999999999999}': OverflowError
            raise ConfigError(f"{key}.answer_regex: {src.answer_regex!r} does not compile: {e}") from None
    try:
        fields = template_fields(src.prompt_template)
    except ValueError as e:
        raise ConfigError(f"{key}.prompt_template: {e}") from None
    if fields - {"prompt", "instruction"}:
        raise ConfigError(f"{key}.prompt_template: {src.prompt_template!r} uses "
                          f"{sorted(fields - {'prompt', 'instruction'})}: only {{prompt}} and "
                          f"{{instruction}} are filled in")
    if "prompt" not in fields:
        raise ConfigError(f"{key}.prompt_template: {src.prompt_template!r} does not use {{prompt}}")
    if src.style == "natural" and src.source not in FAMILIES:
        raise ConfigError(f"{key}.style: 'natural' applies to synthetic families only "
                          f"({', '.join(FAMILIES)}), not {src.source!r}")


def _check_continual(cfg) -> None:
    """``paced continual``: at least one method, none twice; split tasks share 10 classes."""
    c = cfg.continual
    if not c.methods:
        raise ConfigError("continual.methods: name at least one method")
    if len(set(c.methods)) != len(c.methods):
        raise ConfigError(f"continual.methods: a method is listed twice in {c.methods}")
    if len(set(c.seeds)) != len(c.seeds) or any(s < 0 for s in c.seeds):
        raise ConfigError(f"continual.seeds: expected distinct seeds >= 0, got {c.seeds}")
    if c.benchmark == "split" and c.num_tasks not in (2, 5):
        raise ConfigError(f"continual.num_tasks: split-digits shares 10 classes equally among 2 or 5 "
                          f"tasks, got {c.num_tasks}")
    if c.ewc_mode == "separate" and c.ewc_decay != 1.0:
        raise ConfigError("continual.ewc_decay: used only with ewc_mode 'online' (leave it 1.0)")


def _check_rl(cfg) -> None:
    """``paced rl``: whole groups per micro-batch, a reward weight per function, PPO's needs."""
    r = cfg.rl
    if r.per_device_train_batch_size % r.num_generations:
        raise ConfigError(f"rl.per_device_train_batch_size: {r.per_device_train_batch_size} completions "
                          f"is not a multiple of rl.num_generations={r.num_generations} (whole groups "
                          f"per micro-batch)")
    if r.advantage == "grpo" and r.num_generations < 2:
        raise ConfigError("rl.num_generations: grpo compares completions within a group; use >= 2")
    if not r.reward_funcs:
        raise ConfigError("rl.reward_funcs: name at least one reward function, e.g. ['verifier']")
    for i, spec in enumerate(r.reward_funcs):
        if spec != "verifier" and ":" not in spec:
            raise ConfigError(f"rl.reward_funcs[{i}]: {spec!r} is neither 'verifier' nor "
                              f"'module:function' / 'path/file.py:function'")
    if r.reward_weights and len(r.reward_weights) != len(r.reward_funcs):
        raise ConfigError(f"rl.reward_weights: {len(r.reward_weights)} weights for "
                          f"{len(r.reward_funcs)} reward functions")
    if not cfg.data.train:
        raise ConfigError("data.train: paced rl needs training prompts")
    if r.guide:
        from .guide import check_hint_template
        try:
            check_hint_template(r.hint_template)
        except ValueError as e:
            raise ConfigError(f"rl.hint_template: {e}") from None
        from .tasks.synthetic import FAMILIES
        if all(s.source in FAMILIES and s.hint_level == 0 for s in cfg.data.train):
            raise ConfigError("data.train: every source has hint_level 0 (no hints); rl.guide needs "
                              "hints: hint_level 1..3, or a file with a hint field")


# a command root's own rules, by the root's class name (paced/config.py)
ROOT_RULES = {"RLConfig": _check_rl, "ContinualConfig": _check_continual}
