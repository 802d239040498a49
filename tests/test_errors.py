"""Every bad input a user can give ends in one line naming the file, line or key, exit code 2,
no traceback (``paced --debug`` shows it); sizes are bounded before any work; damaged
checkpoints and half-built models are skipped or rebuilt, never loaded."""
import json
import os
import time
from pathlib import Path

import pytest
import torch

from paced import cli
from paced.checkpoint import checkpoint_problem, latest_checkpoint, resume_or_fresh, save_checkpoint
from paced.config import EvalConfig, load_config
from paced.config import ConfigError
from paced.rewards import call_reward_function, load_reward_function
from paced.tasks.files import DataError, load_file
from paced.tasks.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def one_error(capsys, *argv) -> str:
    rc, err = run_cli(capsys, *argv)
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], (rc, err)
    return err[0]


# --------------------------------------------------------------------------- configs, overrides
@pytest.mark.parametrize("encoding, what", [("latin-1", "not UTF-8 text"), ("utf-16", "UTF-16 text")])
def test_config_in_another_encoding(tmp_path, capsys, encoding, what):
    f = tmp_path / "c.yaml"
    f.write_bytes("# café\nmodel: {preset: nano}\n".encode(encoding))
    msg = one_error(capsys, "eval", "--config", f)
    assert msg.startswith(f"paced eval: config error: {f}: {what}") and "save it as UTF-8" in msg


def test_config_path_is_a_directory(tmp_path, capsys):
    msg = one_error(capsys, "eval", "--config", tmp_path)
    assert msg == f"paced eval: config error: config file {str(tmp_path)!r} does not exist (it is a directory)"


@pytest.mark.parametrize("text, expect", [
    ("[" * 20000 + "]" * 20000, "nested deeper than 64 levels"),
    ("a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
     "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n",
     "more than 100,000 values once YAML aliases are expanded"),
    ("run: {seed: " + "9" * 5000 + "}\n", "Exceeds the limit (4300 digits)"),
])
def test_hostile_yaml_is_refused_fast(tmp_path, capsys, text, expect):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    t0 = time.perf_counter()
    msg = one_error(capsys, "eval", "--config", f)
    assert time.perf_counter() - t0 < 5
    assert msg.startswith(f"paced eval: config error: {f}: ") and expect in msg


def test_hostile_override(capsys):
    msg = one_error(capsys, "eval", "--config", SMOKE / "eval.yaml", "run.seed=" + "[" * 20000)
    assert "override run.seed: cannot parse value" in msg and "quote a value" in msg
    msg = one_error(capsys, "eval", "--config", SMOKE / "eval.yaml",
                    "data.eval=[{source: add, prompt_template: {prompt} {instruction}}]")
    assert "override data.eval: cannot parse value" in msg and "quote a value" in msg


@pytest.mark.parametrize("override, expect", [
    ("sampling.batch_size=1000000000000", "sampling.batch_size: 1,000,000,000,000 is more than paced accepts (65,536)"),
    ("data.eval=[{source: add, n: 1000000000}]", "data.eval[0].n: 1,000,000,000 problems; a source holds at most 1,000,000"),
    ("eval.n=100000", "eval.n: 100,000 is more than paced accepts (4,096)"),
    ("run.threads=100000", "run.threads: 100000 is above the maximum 1024"),
])
def test_impossible_sizes_are_refused_before_work(tmp_path, capsys, override, expect):
    msg = one_error(capsys, "eval", "--config", SMOKE / "eval.yaml", override, "--run-dir", tmp_path / "r")
    assert expect in msg, msg
    assert not (tmp_path / "r").exists()


def test_threads_bounded_by_the_machine():
    cores = os.cpu_count() or 1
    with pytest.raises(ConfigError, match=f"run.threads: {4 * cores + 1} threads on a machine with {cores} cores"):
        load_config(EvalConfig, SMOKE / "eval.yaml", [f"run.threads={4 * cores + 1}"])


def test_overrides_before_and_after_run_dir(tmp_path, capsys):
    rc, _ = run_cli(capsys, "eval", "--config", SMOKE / "eval.yaml", "eval.n=2", "--run-dir", tmp_path / "r",
                    "sampling.max_completion_length=4")
    assert rc == 0
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "n: 2\n" in saved and "max_completion_length: 4\n" in saved


def test_run_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    msg = one_error(capsys, "eval", "--config", SMOKE / "eval.yaml", "--run-dir", f)
    assert msg == f"paced eval: error: run.dir {str(f)!r} is a file, not a directory: choose another run.dir"
    assert f.read_text() == "keep me"


def test_integer_too_large_for_a_number(capsys):
    msg = one_error(capsys, "eval", "--config", SMOKE / "eval.yaml", "sampling.temperature=1" + "0" * 400)
    assert msg == "paced eval: config error: sampling.temperature: an integer near 10^400 is too large for a number"


def test_huge_config_file_is_refused_unread(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    with open(f, "wb") as fh:
        fh.truncate(2 ** 30)                   # 1 GiB, sparse: read in full it would be held in memory
    t0 = time.perf_counter()
    msg = one_error(capsys, "eval", "--config", f)
    assert time.perf_counter() - t0 < 5
    assert msg == f"paced eval: config error: {f}: more than 16,777,216 bytes, more than a config may hold"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        cli.main(["--debug", "eval", "--config", str(tmp_path)])


# --------------------------------------------------------------------------- data files
def write_rows(path: Path, *lines: str) -> Path:
    path.write_text("".join(x + "\n" for x in lines))
    return path


def test_lone_surrogate_names_the_line(tmp_path, capsys):
    f = write_rows(tmp_path / "d.jsonl", '{"prompt": "1+1=", "answer": "2"}', '{"prompt": "x\\ud800", "answer": "2"}')
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'prompt' \(prompt\) holds an unpaired surrogate "
                                        r"'\\ud800' at character 1"):
        load_file(f)
    assert len(load_file(f, on_error="skip")[0]) == 1
    msg = one_error(capsys, "eval", "--config", SMOKE / "eval.yaml", f"data.eval=[{{source: {f}}}]")
    assert msg.startswith("paced eval: data error: ") and "d.jsonl:2" in msg


@pytest.mark.parametrize("row, expect", [
    ({"answer_format": ["boxed"]}, r"d.jsonl:1: field 'answer_format' is \['boxed'\], not one of"),
    ({"answer_format": "regex", "answer_regex": "(" * 5000 + ")" * 5000},
     r"d.jsonl:1: field 'answer_regex' '\(\(\(.*\.\.\.' does not compile: maximum recursion depth"),
    ({"answer_format": "regex", "answer_regex": "a{99999999999999}"},
     r"d.jsonl:1: field 'answer_regex' 'a\{99999999999999\}' does not compile: the repetition number"),
])
def test_row_format_fields_of_any_type(tmp_path, row, expect):
    f = write_rows(tmp_path / "d.jsonl", json.dumps({"prompt": "1+1=", "answer": "2", **row}))
    with pytest.raises(DataError, match=expect):
        load_file(f)


def test_long_line_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setenv("PACED_MAX_LINE_BYTES", "1000")
    f = write_rows(tmp_path / "d.jsonl", '{"prompt": "1+1=", "answer": "2"}',
                   json.dumps({"prompt": "y" * 5000, "answer": "3"}), '{"prompt": "2+2=", "answer": "4"}')
    with pytest.raises(DataError, match=r"d.jsonl:2: longer than 1,000 bytes \(PACED_MAX_LINE_BYTES"):
        load_file(f)
    exs, skipped = load_file(f, on_error="skip")
    assert [e.answer for e in exs] == ["2", "4"] and skipped == 1        # line numbers kept after it


def test_huge_prompt_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PACED_MAX_TEXT_CHARS", "100")
    f = write_rows(tmp_path / "d.jsonl", json.dumps({"prompt": "z" * 101, "answer": "3"}))
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'prompt' \(prompt\) has 101 characters, more than 100"):
        load_file(f)


def test_unreadable_data_file(tmp_path, capsys, monkeypatch):
    f = write_rows(tmp_path / "d.jsonl", '{"prompt": "1+1=", "answer": "2"}')
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(f) else real(p, mode, *a, **k))
    with pytest.raises(DataError, match=r"d.jsonl: permission denied"):
        load_file(f)


# --------------------------------------------------------------------------- reward functions
def test_trl_style_reward_functions(tmp_path):
    f = tmp_path / "rw.py"
    f.write_text(
        "def trl_full(prompts, completions, completion_ids, trainer_state, **kwargs):\n"
        "    assert trainer_state is None and 'answer' in kwargs\n"
        "    return [float(len(c)) for c in completion_ids]\n"
        "def plain(prompts, completions):\n"
        "    return [1.0] * len(completions)\n"
        "def needs_more(prompts, completions, tools, **kwargs):\n"
        "    return [0.0] * len(completions)\n")
    exs = generate("add", 2, seed=0, difficulty=(1, 1))
    args = (["p1", "p2"], ["a", "b"], exs, [[1, 2, 3], [4]])
    assert call_reward_function(load_reward_function(f"{f}:trl_full"), *args) == [3.0, 1.0]
    assert call_reward_function(load_reward_function(f"{f}:plain"), *args) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"rw.py:needs_more' requires an argument 'tools' that paced does not pass"):
        load_reward_function(f"{f}:needs_more")


# --------------------------------------------------------------------------- checkpoints, init
def tiny_ckpts(run_dir: Path, steps=(1, 2, 3)):
    from paced.models import build_tiny, load_model_and_tokenizer
    build_tiny("nano", run_dir / "m", seed=0)
    model, tok = load_model_and_tokenizer(run_dir / "m")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for s in steps:
        save_checkpoint(run_dir, s, model, tok, opt, None, {"marker": s})
    return model, opt


@pytest.mark.parametrize("damage", ["weights", "trainer_state", "state"])
def test_damaged_latest_checkpoint_falls_back(tmp_path, damage):
    from paced.checkpoint import load_checkpoint
    model, opt = tiny_ckpts(tmp_path)
    last = tmp_path / "checkpoints" / "step-3"
    if damage == "weights":
        (last / "model.safetensors").unlink()
    elif damage == "trainer_state":
        p = last / "trainer_state.pt"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        (last / "state.json").write_text("{corrupt")
    assert checkpoint_problem(last) is not None and checkpoint_problem(tmp_path / "checkpoints" / "step-2") is None
    assert latest_checkpoint(tmp_path).name == "step-2"
    ckpt, state = resume_or_fresh(tmp_path, True, lambda c: load_checkpoint(c, model, opt, None))
    assert ckpt.name == "step-2" and state["marker"] == 2


def test_every_checkpoint_damaged_is_an_error(tmp_path):
    tiny_ckpts(tmp_path, steps=(1,))
    (tmp_path / "checkpoints" / "step-1" / "state.json").unlink()
    with pytest.raises(ValueError, match=r"--resume: no complete checkpoint in .*step-1 \(state.json is missing\)"):
        resume_or_fresh(tmp_path, True, lambda c: {})


def _flip_tensor_byte(path: Path) -> None:
    import struct
    b = bytearray(path.read_bytes())
    header = struct.unpack("<Q", b[:8])[0]
    b[8 + header + (len(b) - 8 - header) // 2] ^= 0xFF          # inside the tensor data: no header changes
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", ["tensor byte", "state value"])
def test_silent_corruption_is_caught_by_the_checksums(tmp_path, damage):
    from paced.checkpoint import load_checkpoint
    model, opt = tiny_ckpts(tmp_path)
    last = tmp_path / "checkpoints" / "step-3"
    if damage == "tensor byte":
        _flip_tensor_byte(last / "model.safetensors")
    else:   # same size, still valid JSON: only the hash can tell
        (last / "state.json").write_text((last / "state.json").read_text().replace('"step": 3', '"step": 9'))
    assert checkpoint_problem(last) is None                            # the cheap check cannot see it
    why = checkpoint_problem(last, verify_checksums=True)
    assert "does not match its SHA-256 in checksums.json" in why
    ckpt, state = resume_or_fresh(tmp_path, True, lambda c: load_checkpoint(c, model, opt, None))
    assert ckpt.name == "step-2" and state["marker"] == 2


def test_a_pickle_in_trainer_state_is_refused_never_run(tmp_path):
    import hashlib
    from paced.checkpoint import load_checkpoint
    model, opt = tiny_ckpts(tmp_path)
    last = tmp_path / "checkpoints" / "step-3"
    marker = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"optimizer": Payload(), "scheduler": None, "rng": None}, last / "trainer_state.pt")
    sums = json.loads((last / "checksums.json").read_text())   # as if written so: the hashes agree
    data = (last / "trainer_state.pt").read_bytes()
    sums["trainer_state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (last / "checksums.json").write_text(json.dumps(sums))
    assert checkpoint_problem(last, verify_checksums=True) is None
    ckpt, state = resume_or_fresh(tmp_path, True, lambda c: load_checkpoint(c, model, opt, None))
    assert ckpt.name == "step-2" and state["marker"] == 2
    assert not marker.exists()
    for older in ("step-1", "step-2"):          # nothing to fall back to: one error saying why
        (tmp_path / "checkpoints" / older / "state.json").unlink()
    with pytest.raises(ValueError, match=r"step-3 \(trainer_state.pt holds Python objects other than tensors: "
                                         r"refused, not unpickled\)"):
        resume_or_fresh(tmp_path, True, lambda c: load_checkpoint(c, model, opt, None))
    assert not marker.exists()


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    import shutil

    from paced import checkpoint
    model, opt = tiny_ckpts(tmp_path, steps=(1, 2))
    real = shutil.rmtree

    def killed_midway(path, *a, **k):       # deletes one file of the checkpoint, then the kill
        if Path(path).name == ".del-step-1" and Path(path).exists():
            next(p for p in Path(path).iterdir() if p.is_file()).unlink()
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 3, model, tok_of(tmp_path), opt, None, {"marker": 3}, keep=2)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [".del-step-1", "step-2", "step-3"]
    assert all(checkpoint_problem(c) is None for c in root.glob("step-*"))
    save_checkpoint(tmp_path, 4, model, tok_of(tmp_path), opt, None, {"marker": 4}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-3", "step-4"]      # the leftover is cleared


def tok_of(run_dir: Path):
    from paced.models import load_model_and_tokenizer
    return load_model_and_tokenizer(run_dir / "m")[1]


def test_fresh_run_refuses_old_checkpoints(tmp_path, capsys):
    tiny_ckpts(tmp_path, steps=(6,))
    msg = one_error(capsys, "sft", "--config", SMOKE / "sft.yaml", "--run-dir", tmp_path)
    assert "holds checkpoints of an earlier run (step-6): continue it with --resume" in msg


def test_half_built_init_is_rebuilt(tmp_path):
    from paced.rundir import load_model
    init = tmp_path / "init"
    init.mkdir()
    (init / "config.json").write_text("{}")                    # what a kill while building left
    (init / "generation_config.json").write_text("{}")
    model, tok, path = load_model(None, "nano", 0, "float32", tmp_path)
    assert path == str(init) and (init / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".init.tmp")]
    again, _, _ = load_model(None, "nano", 0, "float32", tmp_path)  # whole now: loaded, not rebuilt
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))



def test_failed_or_killed_init_build_leaves_no_temporary(tmp_path, monkeypatch):
    from paced import rundir
    killed = tmp_path / ".init.tmp-999999"                       # what a build killed earlier left
    killed.mkdir()
    (killed / "config.json").write_text("{}")

    def fails(preset, out, seed=0):                              # e.g. a path the tokenizer cannot write
        Path(out).mkdir()
        (Path(out) / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(rundir, "build_tiny", fails)
    with pytest.raises(OSError, match="disk full"):
        rundir.build_init("nano", tmp_path / "init", 0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".init")]


def test_a_killed_writes_temporaries_are_removed(tmp_path):
    from paced.rundir import start_run
    run = tmp_path / "r"
    run.mkdir()
    for name in (".threads.tmp4242", ".config.yaml.tmp4242", ".metrics.jsonl.tmp7"):   # a kill mid-write
        (run / name).write_text("half")
    (run / ".keep.tmpx").write_text("not ours")
    start_run(load_config(EvalConfig, SMOKE / "eval.yaml", run_dir=run))
    assert sorted(p.name for p in run.iterdir()) == [".keep.tmpx", "config.yaml", "threads"]


def test_resume_with_a_changed_config(tmp_path, capsys):
    base = ["sft", "--config", SMOKE / "sft.yaml", "--run-dir", tmp_path / "r"]
    assert run_cli(capsys, *base)[0] == 0
    msg = one_error(capsys, *base, "--resume", "optim.lr=0.5", "run.seed=3")
    assert msg.startswith("paced sft: error: --resume with a config that changes what the run computes: ")
    assert "optim.lr (" in msg and "-> 0.5)" in msg and "run.seed (0 -> 3)" in msg
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "seed: 0" in saved                             # the saved config is not overwritten
    rc, err = run_cli(capsys, *base, "--resume", "run.logging_steps=7")
    assert rc == 0                                        # reporting may change


def test_trackers_get_the_run_config_and_a_right_install_hint(tmp_path, monkeypatch):
    import sys
    import types

    from paced.config import SFTConfig
    from paced.train import sft
    seen = {}

    class Run:
        def log(self, m, step):
            seen.setdefault("steps", []).append(step)

        def finish(self):
            seen["finished"] = True

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: seen.update(config=kw["config"]) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sft.train(load_config(SFTConfig, SMOKE / "sft.yaml", ["run.report_to=[wandb]"], run_dir=tmp_path / "w"))
    assert seen["config"]["optim"]["lr"] == 3.0e-3 and seen["config"]["run"]["dir"] == str(tmp_path / "w")
    assert seen["steps"] and seen["finished"]
    monkeypatch.setitem(sys.modules, "trackio", None)                 # not installed
    with pytest.raises(RuntimeError, match=r"trackio is not installed .*; pip install trackio or drop it"):
        sft.train(load_config(SFTConfig, SMOKE / "sft.yaml", ["run.report_to=[trackio]"], run_dir=tmp_path / "t"))


# --------------------------------------------------------------------------- prompts past the context
def test_prompt_longer_than_the_context(tmp_path, capsys):
    """A prompt that with the completion budget overflows the model's context (the nano preset:
    256 positions) is refused naming the problem, or keeps its last tokens with long_prompts=truncate."""
    from paced.models import fit_prompts, prompt_room
    f = write_rows(tmp_path / "d.jsonl", '{"id": "short", "prompt": "1+1=", "answer": "2"}',
                   json.dumps({"id": "long-one", "prompt": "1+" * 400 + "1=", "answer": "401"}))
    args = ("eval", "--config", SMOKE / "eval.yaml", f"data.eval=[{{source: {f}}}]", "eval.n=1",
            "eval.greedy=false", "--run-dir", tmp_path / "r")
    msg = one_error(capsys, *args)
    assert msg.startswith("paced eval: error: problem 'long-one': its prompt is ") and \
        "set model.long_prompts=truncate" in msg, msg
    assert not (tmp_path / "r" / "eval.json").exists()
    rc, _ = run_cli(capsys, *args, "model.long_prompts=truncate")
    assert rc == 0 and json.loads((tmp_path / "r" / "eval.json").read_text())["overall"]["problems"] == 2
    assert fit_prompts([[1, 2, 3, 4], [5]], 2, "truncate") == [[3, 4], [5]]
    with pytest.raises(ValueError, match="max_completion_length 256 leaves no room for a prompt in the "
                                         "model's context of 256 tokens"):
        prompt_room(256, type("M", (), {"config": type("C", (), {"max_position_embeddings": 256})()})())
    assert prompt_room(8, object()) is None                    # no stated context: nothing to fit


# --------------------------------------------------------------------------- answer checking
def test_math_timeout_is_a_config_key_and_undecided_is_logged(tmp_path, monkeypatch):
    """run.math_timeout is the first budget of every math-verify call (then one retry at 4x); a
    pair that times out at both is counted in that step's metrics row ('undecided'), never cached."""
    from paced.config import RLConfig
    from paced.tasks import answers
    from paced.train import rollouts
    cfg = load_config(RLConfig, SMOKE / "rl.yaml", ["run.math_timeout=0.5", "rl.max_steps=2", "rl.eval_steps=0"],
                      run_dir=tmp_path / "r")
    budgets = []

    def times_out(pred, gold, timeout):     # a machine so busy that math-verify never answers
        budgets.append(timeout)
        return False, True

    def symbolic_verify(text, example, finished=True):   # every completion reaches math-verify
        return answers.math_equal("1", f"\\sqrt{{{len(budgets) + 2}}}")
    monkeypatch.setattr(answers._WORKER, "call", times_out)
    monkeypatch.setattr(rollouts, "verify", symbolic_verify)
    answers.take_undecided()
    try:
        from paced.train import rl
        rl.train(cfg)
    finally:
        answers._TIMEOUT.clear()
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["undecided"] > 0 for r in rows)
    assert sum(r["undecided"] for r in rows) * 2 == len(budgets)
    assert budgets[:2] == [0.5, 2.0] and set(budgets) == {0.5, 2.0}
    assert answers.math_timeout() == 2.0                # the default again once unset


def test_text_overrides_need_no_yaml_quoting(tmp_path, capsys):
    """A text option takes its override verbatim (YAML would read 'You are: helpful' as a mapping
    and '{prompt} {instruction}' as an error); quoted YAML and null still work; a list item
    cannot be set alone, and the message says how to set the list."""
    cfg = load_config(EvalConfig, SMOKE / "eval.yaml", ["model.system_prompt=You are: helpful", "model.path=null",
                                                         "data.eval=[{source: add, n: 2, prompt_template: '{prompt}!'}]"])
    assert (cfg.model.system_prompt, cfg.model.path, cfg.data.eval[0].prompt_template) == \
        ("You are: helpful", None, "{prompt}!")
    assert load_config(EvalConfig, SMOKE / "eval.yaml", ['model.system_prompt="a: b"']).model.system_prompt == "a: b"
    msg = one_error(capsys, "eval", "--config", SMOKE / "eval.yaml", "data.eval[0].n=3", "--run-dir", tmp_path)
    assert msg == ("paced eval: config error: override data.eval[0].n: an item of a list cannot be set alone; "
                   "give the whole list, e.g. 'data.eval=[{source: add, n: 64}]'")


def test_a_ledger_created_by_several_processes_at_once_waits_for_the_lock(tmp_path, monkeypatch):
    """Found by benchmarks/reliability.py: several processes creating one new ledger at once
    had ~1 in 90 fail with "database is locked" (switching to WAL does not wait); opening now
    retries for up to LOCK_WAIT_S, and a lock held past that is one line."""
    import sqlite3
    from paced import ledger
    real, calls = ledger.Ledger._connect, []

    def locked_twice(self):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self)
    monkeypatch.setattr(ledger.Ledger, "_connect", locked_twice)
    led = ledger.Ledger(tmp_path / "l.sqlite")
    led.record({"a": (1, 2)}, model="m", stage="s")
    assert len(calls) == 4 and led.counts() == {"a": (1, 2)}
    def locked(self):
        raise sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(ledger, "LOCK_WAIT_S", 0.05)
    monkeypatch.setattr(ledger.Ledger, "_connect", locked)
    with pytest.raises(ValueError) as e:
        ledger.Ledger(tmp_path / "m.sqlite")
    assert str(e.value) == f"{tmp_path / 'm.sqlite'}: cannot open the pass-rate ledger (database is locked)"


def test_a_ledger_that_is_not_sqlite_and_an_overflowing_regex(tmp_path, capsys):
    """Found by benchmarks/reliability.py: sqlite3's DatabaseError and re's OverflowError were
    tracebacks; now one line each, and the file is left as it was."""
    bad = tmp_path / "notes.sqlite"
    bad.write_text("hello, not a db\n")
    msg = one_error(capsys, "ledger", "--config", SMOKE / "ledger.yaml", "--path", bad, "--run-dir", tmp_path / "r")
    assert msg == (f"paced ledger: error: {bad}: not a pass-rate ledger (file is not a database); give "
                   f"ledger.path a new file or a paced ledger (SQLite)")
    assert bad.read_text() == "hello, not a db\n"
    msg = one_error(capsys, "eval", "--config", SMOKE / "eval.yaml", "--run-dir", tmp_path / "e",
                    'data.eval=[{source: add, n: 2, answer_format: regex, answer_regex: "a{99999999999999}"}]')
    assert msg == ("paced eval: config error: data.eval[0].answer_regex: 'a{99999999999999}' does not compile: "
                   "the repetition number is too large")


def test_paced_ledger_reads_a_ledger_in_a_read_only_directory(tmp_path, capsys):
    """Found by benchmarks/reliability.py: WAL mode needs -wal / -shm files beside the ledger, so
    a read-only directory refused `paced ledger`; it now opens the file read-only."""
    import subprocess
    from paced.ledger import Ledger
    d = tmp_path / "ro"
    led = Ledger(d / "ledger.sqlite")
    led.record({"a": (1, 2), "b": (0, 2)}, "m", "s")
    led.close()
    os.chmod(d / "ledger.sqlite", 0o444)
    os.chmod(d, 0o555)
    root = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
    try:
        try:
            (d / ".probe").touch()
            pytest.skip("this user can still write into a chmod 555 directory")
        except OSError:
            pass
        assert cli.main(["ledger", "--config", str(SMOKE / "ledger.yaml"), "--path", str(d / "ledger.sqlite"),
                         "--run-dir", str(tmp_path / "r"), "ledger.model=m"]) in (0, None)
        out = capsys.readouterr()
        assert "problems:      2" in out.out + out.err or "problems: 2" in out.out + out.err
        assert sorted(p.name for p in d.iterdir()) == ["ledger.sqlite"]
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(d)], capture_output=True)
        os.chmod(d, 0o755)


def test_a_step_of_too_many_sequences_is_refused(tmp_path, capsys):
    """Found by benchmarks/reliability.py: gradient_accumulation_steps=10**30 passed the caps and hung."""
    msg = one_error(capsys, "sft", "--config", SMOKE / "sft.yaml", "train.gradient_accumulation_steps=10000000",
                    "--run-dir", tmp_path)
    assert msg == ("paced sft: config error: train.gradient_accumulation_steps: 8 x 10,000,000 sequences per "
                   "step is more than paced accepts (1,048,576); a typo?")
