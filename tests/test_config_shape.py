"""The config's shape: shared sections, sub-sections, renamed keys that keep working with a
warning, ``include:`` presets that state only what differs, Literal choices, rules next to fields."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from paced import config as C
from paced.cli import COMMANDS
from paced.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"


def test_old_keys_work_with_a_warning_naming_the_new_one(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("policy: {preset: nano}\ndata: {train: [{source: add, n: 8}]}\n"
                   "rl: {temperature: 0.7, guide: true, guide_shaping: power, vf_coef: 0.3, save_steps: 5}\n")
    cfg = load_config(C.RLConfig, old, ["rl.hint_template={prompt} hint: {hint}", "optim.classp_eps=0.001"])
    assert (cfg.sampling.temperature, cfg.rl.guide.enabled, cfg.rl.guide.shaping) == (0.7, True, "power")
    assert (cfg.rl.ppo.vf_coef, cfg.run.save_steps, cfg.optim.classp.eps) == (0.3, 5, 0.001)
    assert cfg.rl.guide.hint_template == "{prompt} hint: {hint}"        # still verbatim text
    err = capsys.readouterr().err.splitlines()
    assert f"paced: {old}: 'rl.temperature' is now 'sampling.temperature' (the old name works until paced 0.3)" in err
    assert "paced: override: 'rl.hint_template' is now 'rl.guide.hint_template' (the old name works until " \
           "paced 0.3)" in err
    assert len(err) == 7
    new = load_config(C.RLConfig, None, ["policy.preset=nano", "data.train=[{source: add, n: 8}]",
                                         "sampling.temperature=0.7", "rl.guide.enabled=true", "rl.guide.shaping=power",
                                         "rl.ppo.vf_coef=0.3", "run.save_steps=5", "optim.classp.eps=0.001",
                                         "rl.guide.hint_template={prompt} hint: {hint}"])
    assert C.to_dict(new) == C.to_dict(cfg) and capsys.readouterr().err == ""


def test_an_old_and_a_new_key_with_different_values_fail_naming_both(tmp_path, capsys):
    both = tmp_path / "both.yaml"
    both.write_text("model: {preset: nano}\neval: {max_completion_length: 9}\nsampling: {max_completion_length: 8}\n")
    with pytest.raises(ConfigError) as e:
        load_config(C.EvalConfig, both)
    assert str(e.value) == (f"{both}: eval.max_completion_length (renamed sampling.max_completion_length) and "
                            f"sampling.max_completion_length are both set, to 9 and 8; keep only "
                            f"sampling.max_completion_length")
    # an override (old name or new) still overrides the file, as any override does
    cfg = load_config(C.EvalConfig, SMOKE / "eval.yaml", ["eval.max_completion_length=9"])
    assert cfg.sampling.max_completion_length == 9


def test_resuming_a_run_saved_under_the_old_names_compares_them(tmp_path):
    from paced.rundir import check_resume_config
    saved = tmp_path / "config.yaml"
    cfg = load_config(C.SFTConfig, SMOKE / "sft.yaml")
    old = C.to_dict(cfg)
    old["train"].update(logging_steps=2, save_steps=3, save_total_limit=2)   # 0.1's places
    for k in ("logging_steps", "save_steps", "save_total_limit"):
        del old["run"][k]
    old["optim"].update({f"classp_{k}": v for k, v in old["optim"].pop("classp").items()})
    saved.write_text(yaml.safe_dump(old))
    assert check_resume_config(cfg, saved) == []
    changed = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, classp=C.ClasspCfg(p=2.0)))
    with pytest.raises(ValueError, match=r"optim\.classp\.p \(1\.0 -> 2\.0\)"):
        check_resume_config(changed, saved)


def test_include_merges_files_in_order_and_refuses_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {preset: nano}\nrun: {dir: runs/base, seed: 3}\n")
    (tmp_path / "mid.yaml").write_text("include: base.yaml\nrun: {dir: runs/mid}\ntrain: {max_steps: 7}\n")
    (tmp_path / "top.yaml").write_text("include: [mid.yaml]\ntrain: {max_steps: 9}\n")
    cfg = load_config(C.SFTConfig, tmp_path / "top.yaml", ["run.seed=4"])
    assert (cfg.model.preset, cfg.run.dir, cfg.train.max_steps, cfg.run.seed) == ("nano", "runs/mid", 9, 4)
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: include: 'a\.yaml' includes itself"):
        load_config(C.SFTConfig, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("include: {file: a.yaml}\n")
    with pytest.raises(ConfigError) as e:
        load_config(C.SFTConfig, tmp_path / "c.yaml")
    assert str(e.value) == f"{tmp_path / 'c.yaml'}: include: expected a file name or a list of them, got " \
                           f"{{'file': 'a.yaml'}}"
    (tmp_path / "d.yaml").write_text("include: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml' does not exist"):
        load_config(C.SFTConfig, tmp_path / "d.yaml")


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _root_of(path: Path):
    command = path.parent.name if path.parent.name in COMMANDS else path.stem.split("_")[0]
    return COMMANDS[command][0]


PRESETS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "accelerate")  # those: accelerate's


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_presets_state_only_what_differs(path):
    """Every key a shipped config sets changes something: it differs from the root's default, or
    from what the files it includes set (a key equal to its default is noise a reader must check)."""
    root = _root_of(path)
    own = yaml.safe_load(path.read_text())
    includes = own.pop("include", [])
    base = C.to_dict(root())
    for inc in [includes] if isinstance(includes, str) else includes:
        base = C.to_dict(load_config(root, path.parent / inc))
    same = [k for k, v in _leaves(own) if _get(base, k) == v and not (k == "run.dir")]
    assert not same, f"{path.name} restates {same}"


def test_choices_are_literals_and_the_help_lists_them():
    import typing
    hints = typing.get_type_hints(C.RLCfg)
    assert C.tools.choices_of(hints["advantage"]) == ("grpo", "psr", "nsr", "w_reinforce", "ppo")
    assert C.tools.choices_of(typing.get_type_hints(C.ContinualCfg)["methods"]) == C.CONTINUAL_METHODS
    help_text = C.describe(C.RLConfig)
    assert "rl.guide.shaping" in help_text and "{percentile, constant, power, none}" in help_text
    with pytest.raises(ConfigError) as e:
        load_config(C.RLConfig, SMOKE / "rl.yaml", ["rl.guide.shaping=powr"])
    assert str(e.value) == "rl.guide.shaping: 'powr' is not one of ['percentile', 'constant', 'power', 'none']; " \
                           "did you mean 'power'?"


def test_each_sections_rule_names_its_own_key():
    with pytest.raises(ConfigError) as e:
        load_config(C.SFTConfig, SMOKE / "sft.yaml",
                    ["data.train=[{source: add, n: 4}, {source: add, difficulty: [3, 1]}]"])
    assert str(e.value) == "data.train[1].difficulty: lo 3 > hi 1"
    with pytest.raises(ConfigError) as e:
        load_config(C.SFTConfig, SMOKE / "sft.yaml", ["regularizer.name=ewc"])
    assert str(e.value).startswith("regularizer.fisher_data: regularizer.name 'ewc' needs the data")
    with pytest.raises(ConfigError) as e:
        load_config(C.DistillConfig, SMOKE / "distill.yaml",
                    ["distill.stages=[{name: a}, {name: b, loss_type: reverse_kl, online_passrate: true}]"])
    assert str(e.value) == ("distill.stages[1].online_passrate: the online rows change the weights only when p̂ "
                            "is re-estimated; set reestimate_every > 0")


def test_the_demo_config_has_its_steps_as_sections():
    keys = C.all_keys(C.DemoConfig)
    assert "demo.teacher_steps" in keys and "sampling.max_completion_length" in keys
    assert not [k for k in keys if k.endswith("max_completion_length") and not k.startswith("sampling.")]
    assert not [k for k in keys if k.endswith("save_steps") and not k.startswith("run.")]
