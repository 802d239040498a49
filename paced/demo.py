"""The end-to-end demo on CPU: a teacher and a weaker student from scratch, their pass rates.

    paced demo                      # the built-in default (`paced demo --help` lists it)
    paced demo demo.student_steps=500 'distill.stages=[]' --run-dir runs/demo-short

Steps, each one the same function the matching command runs, each in its own sub-directory
(a finished step is skipped when the demo is run again, so ``--resume`` continues a killed run):
    1. teacher/  paced sft   (bigger preset, more steps) on data.train (add, mul1, modular)
    2. student/  paced sft   (smaller preset, fewer steps) on demo.student_train (add, sub): a weaker
       student that never saw mul1
    3. passrate/ paced passrate: K student rollouts per student training problem -> ledger.sqlite
    4. eval-teacher/, eval-student/  paced eval on held-out problems (other seeds)
    5. the table: pass@1, pass@k, mean@n, greedy for both, and the student's p̂ histogram
    6. distill/  paced distill: PACED forward KL from the teacher on a pool of ``demo.distill_families``
       (add, where the student's p̂ spreads, and mul1, where it is 0), measured on held-out
       ``demo.distill_target`` (add), with the families not distilled on (sub) as the forgetting
       probe; the before/after table
    7. rl/  paced rl: a short W-REINFORCE run (+λ on correct, −1 on wrong samples) from the
       student on ``demo.rl_families`` (add); held-out pass@1 / pass@n / greedy before and after
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from . import config as C
from .runlog import console, write_json

# The default task mix, after the pilot in docs/methods.md (pilot settings): the teacher learns
# addition and multiplication-by-one-digit (and modular arithmetic); the student, smaller and
# trained for fewer steps, learns addition (partly) and subtraction and never sees mul1. Its
# addition pass rates spread over (0, 1); on mul1 they are 0: the problems PACED's weights drop.
DEFAULT_TRAIN = [
    {"source": "add", "n": 20000, "difficulty": [1, 8], "seed": 0},
    {"source": "mul1", "n": 10000, "difficulty": [1, 8], "seed": 0},
    {"source": "modular", "n": 10000, "difficulty": [1, 6], "seed": 0},
]
DEFAULT_STUDENT_TRAIN = [
    {"source": "add", "n": 20000, "difficulty": [1, 8], "seed": 0},
    {"source": "sub", "n": 20000, "difficulty": [1, 8], "seed": 0},
]
DEFAULT_EVAL = [
    {"source": "add", "n": 64, "difficulty": [1, 8], "seed": 1},
    {"source": "mul1", "n": 64, "difficulty": [1, 8], "seed": 1},
    {"source": "sub", "n": 64, "difficulty": [1, 8], "seed": 1},
]


def _sources(raw: list[dict]) -> list[C.DataSource]:
    return [C.load_config(C.DataCfg, None, [f"train={json.dumps([r])}"]).train[0] for r in raw]


def _done(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() or (run_dir / "eval.json").is_file()


def run(cfg: C.DemoConfig, resume: bool = False) -> dict:
    from .evaluate import run as run_eval, table
    from .passrate import histogram_text, run as run_passrate
    from .train.sft import train as run_sft

    root = Path(cfg.run.dir)
    root.mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, root / "config.yaml")
    train_sources = cfg.data.train or _sources(DEFAULT_TRAIN)
    student_sources = cfg.demo.student_train or (_sources(DEFAULT_STUDENT_TRAIN) if not cfg.data.train else train_sources)
    eval_sources = cfg.data.eval or _sources(DEFAULT_EVAL)
    data = C.DataCfg(train=train_sources, eval=eval_sources)
    sft_data = {"teacher": data, "student": dataclasses.replace(data, train=student_sources)}
    run_cfg = lambda sub: dataclasses.replace(cfg.run, dir=str(root / sub))  # noqa: E731
    plain_run = lambda sub: C.RunCfg(**{**{f.name: getattr(cfg.run, f.name)  # noqa: E731
                                           for f in dataclasses.fields(C.RunCfg)}, "dir": str(root / sub)})

    models = {}
    for who, preset, steps in (("teacher", cfg.demo.teacher_preset, cfg.demo.teacher_steps),
                               ("student", cfg.demo.student_preset, cfg.demo.student_steps)):
        sub = root / who
        if _done(sub):
            console.print(f"[dim]{who}: already trained in {sub}, skipping[/]")
        else:
            console.rule(f"{who}: SFT of a '{preset}' model for {steps} steps")
            run_sft(C.SFTConfig(
                model=C.ModelCfg(preset=preset, init_seed=cfg.run.seed), data=sft_data[who], optim=cfg.optim,
                train=dataclasses.replace(cfg.train, max_steps=steps), run=run_cfg(who)),
                resume=resume)
        models[who] = str(sub / "model")

    ledger_path = str(root / "ledger.sqlite")
    if not _done(root / "passrate"):
        console.rule("student pass rates")
        share = max(1, cfg.demo.passrate_pool // len(student_sources))  # the first problems of each source
        pool = dataclasses.replace(data, train=[dataclasses.replace(s, n=min(s.n, share) if s.n else share)
                                                 for s in student_sources])
        run_passrate(C.PassrateConfig(
            model=C.ModelCfg(path=models["student"]), data=pool, sampling=cfg.sampling,
            passrate=cfg.passrate, ledger=C.LedgerCfg(path=ledger_path, model="student", stage="demo"),
            run=plain_run("passrate")))
    results = {}
    for who in ("teacher", "student"):
        sub = root / f"eval-{who}"
        if not _done(sub):
            console.rule(f"evaluating the {who}")
            run_eval(C.EvalConfig(model=C.ModelCfg(path=models[who]), data=data, eval=cfg.eval,
                                  sampling=cfg.sampling, run=plain_run(f"eval-{who}")))
        results[who] = json.loads((sub / "eval.json").read_text())
    passrate = json.loads((root / "passrate" / "summary.json").read_text())
    distilled = run_distill_step(cfg, root, models, data, resume) if cfg.distill.stages else None
    reinforced = run_rl_step(cfg, root, models, data, resume) if cfg.demo.rl_families else None

    console.rule("demo results")
    console.print(table({w: r["overall"] for w, r in results.items()},
                        f"held-out problems (n = {cfg.eval.n}, T = {cfg.sampling.temperature})"))
    per_source = {f"{w}/{s}": r for w, res in results.items() for s, r in res["by_source"].items()}
    console.print(table(per_source, "per family"))
    console.print(f"student pass rates p̂ on {passrate['problems']} training problems "
                  f"(K = {passrate['num_generations']}):")
    console.print(histogram_text(passrate["histogram"]))
    if distilled:
        console.print(distill_table(distilled, cfg))
    if reinforced:
        console.print(rl_table(reinforced, cfg))
    summary = {"teacher": results["teacher"]["overall"], "student": results["student"]["overall"],
               "distill": distilled, "rl": reinforced,
               "by_source": {w: r["by_source"] for w, r in results.items()},
               "student_pass_rates": passrate["histogram"], "ledger": ledger_path, "models": models}
    write_json(root / "demo.json", summary)
    console.print(f"wrote {root / 'demo.json'}")
    return summary


def trainer_sampling(cfg: C.DemoConfig) -> C.SamplingCfg:
    """The demo's sampling for its distillation and RL steps: sampling.batch_size of the trainers'
    own default (512; the sampler's chunks are part of its random stream, so the tables depend on it)."""
    return dataclasses.replace(cfg.sampling, batch_size=C.RLConfig().sampling.batch_size)


def run_distill_step(cfg: C.DemoConfig, root: Path, models: dict, data: C.DataCfg, resume: bool) -> dict:
    """Step 6: PACED distillation teacher -> student; returns its summary (before/after)."""
    from .train.distill import train as run_distill

    sub = root / "distill"
    if not (sub / "summary.json").is_file():
        fams, target = set(cfg.demo.distill_families), set(cfg.demo.distill_target or cfg.demo.distill_families)
        share = max(1, cfg.demo.distill_pool // max(1, sum(s.source in fams for s in data.train)))
        console.rule(f"PACED distillation on {sorted(fams)}: "
                     + ", ".join(f"{s.loss_type}/{s.weighting} x {s.max_steps}" for s in cfg.distill.stages))
        run_distill(C.DistillConfig(
            student=C.ModelCfg(path=models["student"]), teacher=C.TeacherCfg(path=models["teacher"]),
            data=C.DataCfg(train=[dataclasses.replace(s, n=min(s.n or share, share))
                                  for s in data.train if s.source in fams],
                           eval=[s for s in data.eval if s.source in target],
                           forgetting=[s for s in data.eval if s.source not in fams]),
            distill=cfg.distill, sampling=trainer_sampling(cfg), passrate=cfg.passrate, optim=cfg.distill_optim,
            ledger=C.LedgerCfg(path=str(root / "ledger.sqlite"), model="student-distill", stage="distill"),
            run=dataclasses.replace(cfg.run, dir=str(sub))), resume=resume)
    return json.loads((sub / "summary.json").read_text())


def before_after_table(title: str, rows: list[tuple[str, float, float]]):
    """A rich table: one row per (name, before, after) with the change."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("", "before", "after", "change"):
        t.add_column(col, justify="left" if not col else "right")
    for name, b, a in rows:
        t.add_row(name, f"{b:.3f}", f"{a:.3f}", f"{a - b:+.3f}")
    return t


def distill_table(summary: dict, cfg: C.DemoConfig):
    n = cfg.distill.eval_n
    rows = [(f"{split} {metric.replace('@n', f'@{n}')}", summary["before"][split][metric],
             summary["after"][split][metric])
            for split in ("target", "forgetting") if split in summary["after"]
            for metric in ("mean@n", "greedy")]
    return before_after_table(
        f"PACED distillation on {', '.join(cfg.demo.distill_families)}: held-out target "
        f"({', '.join(cfg.demo.distill_target or cfg.demo.distill_families)}) and forgetting probe "
        f"(the families not distilled on), mean@{n} / greedy", rows)


def run_rl_step(cfg: C.DemoConfig, root: Path, models: dict, data: C.DataCfg, resume: bool) -> dict:
    """Step 7: W-REINFORCE from the student; returns its summary (held-out before/after)."""
    from .train.rl import train as run_rl

    sub = root / "rl"
    if not (sub / "summary.json").is_file():
        fams = set(cfg.demo.rl_families)
        share = max(1, cfg.demo.rl_pool // max(1, sum(s.source in fams for s in data.train)))
        console.rule(f"RL ({cfg.rl.advantage}) on {sorted(fams)} for {cfg.rl.max_steps} steps")
        run_rl(C.RLConfig(
            policy=C.ModelCfg(path=models["student"]),
            data=C.DataCfg(train=[dataclasses.replace(s, n=min(s.n or share, share))
                                  for s in data.train if s.source in fams],
                           eval=[s for s in data.eval if s.source in fams]),
            rl=cfg.rl, sampling=trainer_sampling(cfg), optim=cfg.rl_optim,
            ledger=C.LedgerCfg(path=str(root / "ledger.sqlite"), model="student-rl", stage="rl"),
            run=dataclasses.replace(cfg.run, dir=str(sub))), resume=resume)
    return json.loads((sub / "summary.json").read_text())


def rl_table(summary: dict, cfg: C.DemoConfig):
    n = cfg.rl.eval_n
    b, a = summary["before"], summary["after"]
    rows = [(k, b[f"eval/{k}"], a[f"eval/{k}"]) for k in ("pass@1", f"pass@{n}", "greedy")
            if b.get(f"eval/{k}") is not None and a.get(f"eval/{k}") is not None]
    return before_after_table(
        f"RL ({summary['advantage']}, {summary['steps']} steps) on {', '.join(cfg.demo.rl_families)}: "
        f"held-out problems, n = {n} samples at T = {cfg.sampling.temperature}", rows)


def ensure_models(models_dir) -> None:
    """The demo's teacher and student in ``models_dir`` (trained with the demo's settings, the
    distillation and RL steps skipped, when missing): what the benchmarks start from."""
    if (Path(models_dir) / "student" / "model" / "config.json").exists():
        return
    console.print(f"no demo models in {models_dir}: training them with the demo's settings (minutes)")
    run(C.load_config(C.DemoConfig, None, ["distill.stages=[]", "demo.rl_families=[]"], run_dir=models_dir))
