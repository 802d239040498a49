"""Typed configs: unknown keys, wrong types and out-of-range values name the key."""
import pytest
import yaml

from paced.cli import COMMANDS
from paced.config import (ConfigError, EvalConfig, SFTConfig, load_config, parse_overrides,
                          save_config, to_dict)


def write(tmp_path, obj):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(obj))
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, {"model": {"preset": "nano"}, "optim": {"lr": 0.01}})
    cfg = load_config(SFTConfig, p, ["optim.lr=3e-4", "train.max_steps=7",
                                     "data.train=[{source: add, n: 5, difficulty: [1, 3]}]"],
                      run_dir=tmp_path / "r")
    assert cfg.optim.lr == 3e-4 and cfg.train.max_steps == 7
    assert cfg.data.train[0].source == "add" and cfg.data.train[0].difficulty == [1, 3]
    assert cfg.run.dir == str(tmp_path / "r")
    assert cfg.optim.beta2 == 0.99  # default kept


@pytest.mark.parametrize("override,message", [
    (["optim.lrr=1"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    (["trian.max_steps=3"], "did you mean 'train.max_steps'?"),
    (["train.max_steps=abc"], "train.max_steps: expected an integer, got 'abc'"),
    (["train.max_steps=2.5"], "train.max_steps: expected an integer"),
    (["train.max_steps=0"], "train.max_steps: 0 is below the minimum 1"),
    (["optim.name=adamm"], "optim.name: 'adamm' is not one of ['adamw', 'sgd', 'classp']; did you mean 'adamw'?"),
    (["optim.beta1=1.5"], "optim.beta1: 1.5 is above the maximum 1.0"),
    (["run.progress=maybe"], "run.progress: expected true/false"),
    (["data.train=[{source: add, nn: 3}]"], "unknown config key 'data.train[0].nn'"),
    (["data.train=[{source: add, n: 3, difficulty: [5, 2]}]"], "difficulty: lo 5 > hi 2"),
    (["optim=3"], "optim: expected a mapping"),
    (["noequals"], "must look like key=value"),
    (["run.report_to=[tensorbord]"], "unknown tracker 'tensorbord'"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, ["model.preset=nano", *override])
    assert message in str(e.value)


def test_model_required():
    with pytest.raises(ConfigError, match="model.path"):
        load_config(SFTConfig, None, [])


def test_eval_ks_checked():
    with pytest.raises(ConfigError, match=r"eval.ks: every k must lie in \[1, eval.n=4\]"):
        load_config(EvalConfig, None, ["model.preset=nano", "eval.n=4", "eval.ks=[1,8]"])


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {preset: nano\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(SFTConfig, p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(SFTConfig, None, ["model.preset=nano", "data.train=[{source: sub, n: 3}]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(SFTConfig, tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_every_shipped_config_validates():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs"
    found = 0
    for path in sorted(root.rglob("*.yaml")):
        # configs/<command>.yaml, configs/<command>_*.yaml, configs/<command>/*.yaml
        command = path.parent.name if path.parent.name in COMMANDS else path.stem.split("_")[0]
        if command in COMMANDS:
            load_config(COMMANDS[command][0], path)
            found += 1
    assert found >= 18


def test_parse_overrides_nesting():
    from paced.config import SFTConfig as R
    assert parse_overrides(["a.b.c=1", "a.b.d=[1, 2]"], R) == {"a": {"b": {"c": 1, "d": [1, 2]}}}


def test_a_partly_given_section_keeps_the_roots_defaults():
    """Overriding one key of a section must not reset its other keys to the section class's
    defaults: DistillConfig's optim.lr (3e-4) and run.dir survive optim.warmup_steps / run.threads."""
    from paced.config import DemoConfig, DistillConfig
    cfg = load_config(DistillConfig, None, ["student.preset=nano", "teacher.path=self",
                                            "optim.warmup_steps=3", "run.threads=1"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (3e-4, 3)
    assert (cfg.run.dir, cfg.run.threads) == ("runs/distill", 1)
    demo = load_config(DemoConfig, None, ["run.progress=false", "run.logging_steps=7"])
    assert demo.run.dir == "runs/demo" and demo.run.save_steps == 100 and demo.sampling.max_completion_length == 24
    assert demo.distill.stages[0].name == "paced_fkl" and demo.run.logging_steps == 7
