"""Several processes save one checkpoint: every process takes part in gathering the weights
(``Accelerator.get_state_dict``), which under FSDP is a collective; a loop that gathered on the
main process alone would desynchronise (or hang) every other process at its first checkpoint."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # torchrun, two processes
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke"
SPY = """
import os, sys
import accelerate
real = accelerate.Accelerator.get_state_dict
def spy(self, model, unwrap=True):
    with open(os.path.join(sys.argv[1], "gathered-rank" + os.environ["RANK"]), "a") as f:
        f.write("x")
    return real(self, model, unwrap)
accelerate.Accelerator.get_state_dict = spy
from paced.cli import main
sys.exit(main(sys.argv[2:]))
"""
RUNS = {
    "sft": ["train.max_steps=2", "run.save_steps=1"],
    "distill": ["distill.stages=[{name: fkl, loss_type: forward_kl, max_steps: 2, weighting: uniform}]",
                "run.save_steps=1", "data.eval=[]", "data.forgetting=[]"],
    "rl": ["rl.max_steps=2", "run.save_steps=1", "data.eval=[]"],
}


@pytest.mark.parametrize("command", sorted(RUNS))
def test_every_process_gathers_the_weights_it_saves(tmp_path, command):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    (tmp_path / "spy.py").write_text(SPY)
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(tmp_path / "spy.py"), str(tmp_path), command,
                           "--config", str(SMOKE / f"{command}.yaml"), "--run-dir", str(tmp_path / "run"),
                           "run.threads=1", *RUNS[command]],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = [(tmp_path / f"gathered-rank{r}").read_text() if (tmp_path / f"gathered-rank{r}").exists() else ""
             for r in (0, 1)]
    assert calls[0] and calls[0] == calls[1]       # two checkpoints and the final model: 3 gathers each
