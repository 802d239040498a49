"""Every CLI command end to end on tiny models, config/data errors, and exact resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

pytestmark = pytest.mark.slow   # the CLI end to end in subprocesses, torchrun: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def paced(*args, check=True, timeout=240):
    proc = subprocess.run([sys.executable, "-m", "paced", *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"paced {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_lists_every_option():
    out = paced("--help").stdout
    for cmd in ("sft", "distill", "rl", "snr", "continual", "passrate", "eval", "ledger", "demo"):
        assert cmd in out
    sft_help = paced("sft", "--help").stdout
    for key in ("optim.lr", "train.max_steps", "model.path", "run.report_to", "prompt_field"):
        assert key in sft_help


def test_sft_passrate_ledger_eval(tmp_path):
    run = tmp_path / "sft"
    paced("sft", "--config", SMOKE / "sft.yaml", "--run-dir", run)
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "model/model.safetensors",
              "checkpoints/step-6/trainer_state.pt", "checkpoints/step-3/state.json"):
        assert (run / f).exists(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all("loss" in r for r in rows)

    pr = tmp_path / "pr"
    paced("passrate", "--config", SMOKE / "passrate.yaml", "--run-dir", pr, f"model.path={run / 'model'}",
          "model.preset=null")
    summary = json.loads((pr / "summary.json").read_text())
    assert summary["problems"] == 16 and summary["histogram"]["n"] == 16
    out = paced("ledger", "--path", pr).stderr
    assert "p̂ = 0:" in out and "smoke" in out

    ev = tmp_path / "ev"
    paced("eval", "--config", SMOKE / "eval.yaml", "--run-dir", ev, f"model.path={run / 'model'}")
    result = json.loads((ev / "eval.json").read_text())
    assert set(result["overall"]) >= {"pass@1", "pass@2", "pass@4", "mean@n", "greedy"}
    assert len(result["problems"]) == 16 and set(result["by_source"]) == {"add", "modular"}
    # the eval's samples are ledger rows too (stage "eval", the model's directory as its tag)
    from paced.ledger import Ledger
    counts = Ledger(ev / "ledger.sqlite").counts(stage="eval")
    assert counts == {p["id"]: (p["c"], p["n"]) for p in result["problems"]}


def test_sft_on_the_shipped_jsonl(tmp_path):
    """Users' files go through the same loader: the example JSONL trains end to end."""
    run = tmp_path / "j"
    paced("sft", "--config", SMOKE / "sft_jsonl.yaml", "--run-dir", run)
    assert json.loads((run / "summary.json").read_text())["examples"] == 8


def test_demo_smoke(tmp_path):
    run = tmp_path / "demo"
    paced("demo", "--config", SMOKE / "demo.yaml", "--run-dir", run)
    demo = json.loads((run / "demo.json").read_text())
    assert {"teacher", "student", "student_pass_rates"} <= set(demo)
    assert set(demo["by_source"]["student"]) == {"add", "mul1", "sub"}
    dcfg = yaml.safe_load((run / "distill" / "config.yaml").read_text())
    assert [s["source"] for s in dcfg["data"]["train"]] == ["add", "mul1"]       # the pool
    assert [s["source"] for s in dcfg["data"]["eval"]] == ["add"]                # the target
    assert [s["source"] for s in dcfg["data"]["forgetting"]] == ["sub"]          # the probe
    rcfg = yaml.safe_load((run / "rl" / "config.yaml").read_text())
    assert rcfg["rl"]["advantage"] == "w_reinforce" and rcfg["policy"]["path"] == str(run / "student" / "model")
    assert demo["rl"]["steps"] == 2 and "eval/pass@1" in demo["rl"]["after"]
    scfg = yaml.safe_load((run / "student" / "config.yaml").read_text())
    assert [s["source"] for s in scfg["data"]["train"]] == ["add", "sub"]        # student_train
    # running it again skips every finished step
    out = paced("demo", "--config", SMOKE / "demo.yaml", "--run-dir", run).stderr
    assert "already trained" in out


@pytest.mark.parametrize("args,message", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    (["train.max_steps=-1"], "train.max_steps: -1 is below the minimum 1"),
    (["data.train=[{source: nosuchfamily, n: 3}]"], "'nosuchfamily' is neither a synthetic family"),
])
def test_bad_config_is_a_clear_error(tmp_path, args, message):
    proc = paced("sft", "--config", SMOKE / "sft.yaml", "--run-dir", tmp_path / "r", *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_data_row_names_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2", "solution": "2"}\n{"prompt": "2+2=", \n')
    proc = paced("sft", "--config", SMOKE / "sft.yaml", "--run-dir", tmp_path / "r",
                 f"data.train=[{{source: {data}}}]", check=False)
    assert proc.returncode == 2 and "d.jsonl:2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()  # failed before any training
    # the same file with on_error=skip trains on the good row and reports the skip
    proc = paced("sft", "--config", SMOKE / "sft.yaml", "--run-dir", tmp_path / "r2",
                 f"data.train=[{{source: {data}, on_error: skip}}]")
    assert "skipped 1 bad rows" in proc.stderr


def _weights(path):
    return load_file(path / "model" / "model.safetensors")


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = ["--config", SMOKE / "sft.yaml", "model.preset=tiny", "train.max_steps=30",
            "run.save_steps=2", "run.save_total_limit=0", "run.threads=1"]
    full = tmp_path / "full"
    paced("sft", *args, "--run-dir", full)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "paced", "sft", *map(str, args), "--run-dir", killed],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-4").exists():
        assert time.time() < deadline and proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists(), "the run finished before the kill: test is void"
    assert not (killed / "summary.json").exists()

    out = paced("sft", *args, "--run-dir", killed, "--resume").stderr
    assert "resumed from" in out
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # no gap, no duplicate rows after the resume


def test_nan_loss_stops_before_the_update_and_keeps_what_was_written(tmp_path, monkeypatch):
    from paced.config import SFTConfig, load_config
    from paced.train import sft

    real = sft.sft_loss
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        loss, n = real(logits, labels)
        return (loss * float("nan") if calls["n"] == 5 else loss), n

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    cfg = load_config(SFTConfig, SMOKE / "sft.yaml", ["run.save_steps=2", "run.progress=false"],
                      run_dir=tmp_path / "r")
    with pytest.raises(FloatingPointError, match="loss is nan at step 5; nothing was updated"):
        sft.train(cfg)
    assert (tmp_path / "r" / "checkpoints" / "step-4" / "model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_sft_under_torchrun_two_cpu_processes(tmp_path):
    """The same SFT code as DDP (gloo) over two CPU processes: each takes half of every batch."""
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "paced.cli", "sft", "--config",
                           str(SMOKE / "sft.yaml"), "--run-dir", str(run)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 steps x 16 sequences" in proc.stderr  # 8 per process x 2 processes
    state = json.loads((run / "checkpoints" / "step-6" / "state.json").read_text())
    assert state["samples_seen"] == 96
    assert (run / "model" / "model.safetensors").exists()


def test_distill_under_torchrun_with_fewer_live_problems_than_processes(tmp_path):
    """PACED distillation as DDP over two CPU processes, on a pool of ONE problem: each process
    still gets a problem every step (no empty slice), and both stages finish."""
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "paced.cli", "distill", "--config",
                           str(SMOKE / "distill.yaml"), "data.train=[{source: add, n: 1, difficulty: 1}]",
                           "--run-dir", str(run)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (run / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("advantage, dynamic", [("grpo", "false"), ("ppo", "true")])
def test_rl_under_torchrun(tmp_path, advantage, dynamic):
    """RL as DDP over two CPU processes: each samples its own groups, dynamic sampling's rounds
    are agreed across processes, the batch normalisers are global, and the shared ledger gets
    both processes' rollouts. The PPO case runs Guide too (a model from scratch fails every
    group, so every group is rolled out again with its hint)."""
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "paced.cli", "rl", "--config",
                           str(SMOKE / "rl.yaml"), f"rl.advantage={advantage}", f"rl.dynamic_sampling={dynamic}",
                           "rl.max_sampling_rounds=2", f"rl.guide.enabled={advantage == 'ppo'}",
                           f"rl.scale_rewards={'batch' if advantage == 'grpo' else 'group'}",  # the global std
                           "--run-dir", str(run)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 prompts x 8 completions per step" in proc.stderr  # 4 groups per process x 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (run / "model" / "model.safetensors").exists()
    from paced.ledger import Ledger
    trials = [sum(k for _, k in Ledger(run / "ledger.sqlite").counts(stage="rl", step=s).values()) for s in (1, 2, 3)]
    if dynamic == "false":
        assert trials == [64, 64, 64]  # 8 prompts x 8 completions, from both processes
    else:
        assert all(t >= 64 and t % 32 == 0 for t in trials)
        led = Ledger(run / "ledger.sqlite")
        hinted = [sum(k for _, k in led.counts(stage="rl:hinted", step=s).values()) for s in (1, 2, 3)]
        plain_failed = [sum(k for c, k in led.counts(stage="rl", step=s).values() if c == 0) for s in (1, 2, 3)]
        assert hinted == plain_failed and sum(hinted) > 0   # every all-fail group, both processes
        assert rows[-1]["rollouts_total"] == sum(trials) + sum(hinted)


def test_rl_reward_function_errors_name_the_function(tmp_path):
    """A reward function returning a non-number stops the run with its name and the row, no
    traceback; a spec that does not load is named before any model loads."""
    f = tmp_path / "rw.py"
    f.write_text("def says_yes(prompts, completions, **kw):\n    return ['yes'] * len(completions)\n")
    proc = paced("rl", "--config", SMOKE / "rl.yaml", "--run-dir", tmp_path / "r",
                 f"rl.reward_funcs=['{f}:says_yes']", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "says_yes" in proc.stderr and "'yes'" in proc.stderr
    proc = paced("rl", "--config", SMOKE / "rl.yaml", "--run-dir", tmp_path / "r2",
                 f"rl.reward_funcs=['{f}:no_such_fn']", check=False)
    assert proc.returncode == 2 and "no_such_fn" in proc.stderr
    assert not (tmp_path / "r2" / "init").exists()  # failed before the model was built


def test_sft_with_classp_optimizer_and_resume(tmp_path):
    """optim.name=classp works in the trainers, and its state survives a resume."""
    args = ["--config", SMOKE / "sft.yaml", "optim.name=classp", "optim.lr=0.05",
            "optim.classp.threshold=1e-6", "run.save_total_limit=0", "optim.lr_scheduler_type=constant",
            "optim.warmup_steps=0"]
    paced("sft", *args, "--run-dir", tmp_path / "full")
    paced("sft", *args, "train.max_steps=3", "--run-dir", tmp_path / "half")
    paced("sft", *args, "--run-dir", tmp_path / "half", "--resume")
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "half")
    assert all(torch_equal(a[k], b[k]) for k in a)


def torch_equal(x, y):
    import torch
    return torch.equal(x, y)


def test_sft_privileged_share_shows_the_answer_in_a_seeded_share_of_prompts():
    from paced.config import TrainCfg
    from paced.tasks.synthetic import generate
    from paced.train.sft import sft_prompts
    exs = generate("add", 400, seed=0, difficulty=(1, 3))
    assert sft_prompts(exs, TrainCfg(), 0) == [(i, e.prompt) for i, e in enumerate(exs)]
    got = sft_prompts(exs, TrainCfg(privileged_share=0.25), 0)
    assert [i for i, _ in got] == list(range(400))                           # replaced in place
    shown = [g != e.prompt for (_, g), e in zip(got, exs)]
    assert 70 <= sum(shown) <= 130
    assert all(g == f"{e.prompt}(answer {e.answer})" for (_, g), e, s in zip(got, exs, shown) if s)
    assert got == sft_prompts(exs, TrainCfg(privileged_share=0.25), 0)       # seeded
    assert got != sft_prompts(exs, TrainCfg(privileged_share=0.25), 1)
    extra = sft_prompts(exs, TrainCfg(privileged_share=0.25, privileged_extra=True), 0)
    assert extra[:400] == [(i, e.prompt) for i, e in enumerate(exs)]        # every plain example kept
    assert extra[400:] == [(i, g) for i, g in got if g != exs[i].prompt]     # plus the same privileged ones
