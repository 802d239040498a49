"""Write docs/benchmarks.md from benchmarks/results/*.json (``--check``: exit 1 if it is out of date).

Per benchmark: fixed text (what the script measures, the claim it tests, how we read the result) and
tables rendered from the JSON it wrote, with that run's date and machine. Imports neither torch nor
paced. A result file no section reads is listed at the end, so none goes missing silently.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import READ, RESULTS, f3, machine_line, mean_std as ms, pm, read_json as load, section, table as md_table
from report_frontier import adaptive_passrate, frontier_rl

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"


def table(head: list[str], rows: list[list]) -> list[str]:
    return md_table(head, rows, markdown=True)


# --------------------------------------------------------------------------- the sections

def rollout_throughput() -> list[str]:
    r = load("rollout_throughput.json")
    rows = [[x["preset"], f"{x['parameters']:,}", f"{x['prompts']} × {x['n']}", x["max_new_tokens"], x["repeats"],
             f"{x['ours_tok_s']:,.0f}", f"{x['hf_tok_s']:,.0f}", f"**{x['ratio']:.2f}**"] for x in r["rows"]]
    return section(
        "Rollout throughput: our sampler against `generate`",
        "`python benchmarks/rollout_throughput.py [--quick]`. The claim: paced's sampler beats Hugging Face "
        "`model.generate` on the same model, prompts and settings (n samples per prompt, T = 1, fp32, CPU; timed in "
        "alternation, medians). Each distinct prompt is prefilled once and its KV cache copied to its n samples, "
        "and finished rows leave the batch. Without the shared prefill our loop measured 0.89–1.00× HF in "
        "development (not in the JSON). Single repeats vary by about ±20 % on this machine: read the medians.",
        table(["preset", "parameters", "prompts × n", "max new tokens", "repeats", "ours tok/s",
               "HF `generate` tok/s", "ratio"], rows), machine_line(r))


def baselines(name: str) -> list[str]:
    res = load(name)
    m, rows = res["meta"], []
    for key, r in res["table"].items():
        share, arm = key.split("/", 1)
        reach = ", ".join("–" if x is None else str(x) for x in r["steps_to_uniform_final"])
        rows.append([share, arm, pm(r["target_mean8"]), pm(r["target_greedy"]), pm(r["forgetting_drop"]), reach])
    first = next(iter(res["table"].values()))
    return table(["mul1 share", "arm", "target mean@8", "target greedy", "probe drop (mean@8)",
                  "steps to uniform's final"], rows) + [
        f"Before: target mean@8 {first['before_target_mean8']:.3f}, probe mean@8 "
        f"{first['before_forgetting_mean8']:.3f} (seed {m['seeds'][0]}); seeds {m['seeds']}, {m['steps']} steps × "
        f"{m['batch']} problems, lr {m['lr']}, pool {m['pool']}, {m['heldout']} held-out problems each.", "",
        machine_line(res), ""]


def paced_vs_baselines() -> list[str]:
    return section(
        "Does PACED beat its baselines?",
        "`python benchmarks/paced_vs_baselines.py [--quick]`. The claim ([methods.md](methods.md) §1): weighting by p̂(1−p̂) "
        "keeps hopeless problems from eroding what the student knows. From the demo's models, every arm gets the "
        "same steps × problems, lr and first p̂ (K = 8); the pool is addition plus a share of multiplication, "
        "which the student never saw (p̂ = 0); target: held-out addition; probe: held-out subtraction. \"Steps to "
        "uniform's final\": per seed, the first checkpoint (every 50) reaching `fkl/uniform`'s mean final target "
        "at that share (– never).", baselines("paced_vs_baselines.json"),
        "Reading: with nothing unlearnable the weightings end level; with a quarter or half unlearnable, uniform "
        "forward KL ends below the start and loses most of the probe, while PACED and the hard filter gain and "
        "keep it — indistinguishable at K = 8. Self-distillation collapses: a 0.14M student trained from scratch "
        "cannot read the answer in its prompt (step-1 token agreement about 10 %, from run logs, not the JSON).",
        "**A privileged-literate student** (`train.privileged_share=0.25`) can read it, and the weighting matters "
        "again; it is much weaker, so do not compare with the table above.",
        baselines("paced_vs_baselines_privileged_student.json"),
        "**Competent and privileged-literate** (`paced demo train.privileged_share=0.25 train.privileged_extra=true "
        "demo.student_steps=1250 'distill.stages=[]' 'demo.rl_families=[]' --run-dir runs/priv`, then `--models runs/priv "
        "--shares 0.25`): self-distillation works and the weighting decides it. Its accuracy with the answer in "
        "its prompt (0.832 in development) is not in the JSON.",
        baselines("paced_vs_baselines_competent_privileged_student.json"))


SNR_FILES = [("snr/fkl_add_mul1.json", "fkl, 300 add + 100 mul1"), ("snr/fkl_add.json", "fkl, 400 add"),
             ("snr/rkl_add.json", "rkl on student samples, 400 add")]


def snr() -> list[str]:
    runs = [load(f) for f, _ in SNR_FILES]
    rows = [[b["label"], *(f"{r['bins'][i]['problems']}, {r['bins'][i]['snr_debiased']:.3f} "
                           "[{:.3f}, {:.3f}]".format(*r["bins"][i]["snr_debiased_ci95"]) for r in runs)]
            for i, b in enumerate(runs[0]["bins"])]
    rows += [["plain SNR, p̂ = 1 bin", *(f"{r['bins'][-1]['snr']:.3f}" for r in runs)],
             ["mean gradient norm, p̂ = 0 / other bins", *(
                 f"{r['bins'][0]['mean_grad_norm']:.1f} / {min(x['mean_grad_norm'] for x in r['bins'][1:]):.1f}–"
                 f"{max(x['mean_grad_norm'] for x in r['bins'][1:]):.1f}" for r in runs)],
             ["bell? plain / debiased", *(f"{r['bell']} / {r['bell_debiased']}" for r in runs)]]
    r0 = runs[0]
    return section(
        "The SNR measurement: is there a bell?",
        "`paced snr --config configs/snr.yaml` on the demo's models. The claim ([methods.md](methods.md) §1): the "
        "cross-problem SNR ‖mean g‖² / tr(Cov g) of the distillation gradient peaks inside (0, 1) and is near 0 at "
        "p̂ = 0 and 1. The plug-in ratio is biased up by 1/N; each cell is N, the debiased SNR and its 95 % "
        f"jackknife interval. Gradients of `{r0['params']}` ({r0['param_count']:,} "
        f"parameters); p̂ from K = {r0['num_generations']} at T = {r0['passrate_temperature']}.",
        table(["p̂ bin", *(label for _, label in SNR_FILES)], rows),
        "Reading: no bell survives the noise: every interior interval includes 0 (the rkl run's \"bell\" is a "
        "maximum inside that is no more than noise). p̂ = 1 is about 0 as claimed (its plain SNR is the 1/N "
        "artefact); p̂ = 0 is not: with multiplication in the pool it is the one coherent bin (supervised "
        "learning of a new family). A bell would need far more problems per bin, or a larger model. Plots: "
        "[fkl_add](../benchmarks/results/snr/fkl_add.png), "
        "[rkl_add](../benchmarks/results/snr/rkl_add.png).",
        "*`snr/*.json`: no date or machine record in the JSONs (2026-11-26 on the 2-core CPU machine, per the "
        "README of the time).*")


def nsr_passk() -> list[str]:
    r = load("nsr_passk.json")
    s, tables = r["meta"]["settings"], []
    for t, note in (("T0.6", "top-p 0.95"), ("T1.0", "no top-p")):
        ks = [k for k in next(iter(r["table"].values()))[t] if k.startswith("pass@")]
        ks = [k for k in ks if int(k[5:]) in (1, 4, 16, 64, 256) or k == ks[-1]]
        g = ["greedy"] if "greedy" in r["table"]["base"][t] else []
        tables += [f"{t} ({note}):", ""] + table(["arm", *ks, "mean@n", *g], [
            [arm, *(pm(v[t][k]) for k in ks + ["mean@n"]), *(f3(v[t]["greedy"][0]) for _ in g)]
            for arm, v in r["table"].items()])
    return section(
        "Does the NSR paper's pass@k shape appear?",
        "`python benchmarks/nsr_passk.py [--quick]`. The claim ([methods.md](methods.md) §2): negative-sample training "
        "(NSR, W-REINFORCE) keeps pass@k at large k near the base model, while PSR raises pass@1 and narrows "
        f"pass@k. From the demo's student, each arm gets {s['steps']} steps × 32 prompts × 8 completions at T = 1 "
        f"({s['pool']:,} addition problems, lr {s['lr']}, token-mean loss, no KL) and is evaluated on "
        f"{s['heldout']} held-out problems, n = {s['n']}, at T = 0.6 / top-p 0.95 and T = 1; seeds "
        f"{r['meta']['seeds']} (the base row's std is evaluation noise). "
        "Plots: [T = 0.6](../benchmarks/results/nsr_passk_T0.6.png), "
        "[T = 1](../benchmarks/results/nsr_passk_T1.0.png).", tables, machine_line(r),
        "Reading: the shape does not appear. PSR is best at every k, GRPO and PPO gain about half as much, NSR "
        "ends below the base and is unstable, W-REINFORCE is below the base too; the base is already at "
        "pass@256 = 1, so no drop at large k can show. Our guess, not measured: on a diffuse student pushing "
        "sampled wrong tokens down moves mass to other wrong tokens as much as to the right one. A fair test needs "
        "a sharp student with a few systematic wrong modes and unsaturated pass@k; not done.")


def guide_student() -> list[str]:
    r, rows = load("guide_student.json"), []
    for key, label in (("demo_student/template", "demo student, hint in prompt"),
                       ("demo_student/prefix", "demo student, hint as answer prefix"),
                       ("student/template", "hint-literate student, hint in prompt"),
                       ("student/prefix", "hint-literate student, hint as answer prefix")):
        rows += [[label, g["group"], g["problems"], f3(g["plain"]), f3(g["all_fail"]),
                  " / ".join(f3(g[f"h{i}"]) for i in (1, 2, 3)), " / ".join(f3(g[f"mix{i}"]) for i in (1, 2, 3))]
                 for g in r[key] if g["group"] in ("all", "d5-8")]
    rc = r["recipe"]
    return section(
        "### The hint-literate student",
        "`python benchmarks/guide_student.py`. Guide needs a student that uses a hint in its prompt; the demo "
        "student does not (a hint after \"=\" shifts the answer away from the operand digits a tiny model reads "
        f"at fixed offsets). A fixed-width hint before the problem, `{rc['template']}`, and hinted extra copies "
        f"of {rc['share']:.0%} of the addition examples (levels {rc['levels']}), stopped after {rc['steps']} "
        "steps, give one that does. A forced answer prefix helps too, but belongs to the completion, and Guide's "
        f"ratio is over the prompt. {r['problems']} held-out problems, mean@{r['n']} plain and hinted, and the "
        "share of all-fail problems whose hinted samples are mixed:",
        table(["model, hint placement", "difficulty", "problems", "plain", "all-fail share", "hinted 1 / 2 / 3",
               "mixed 1 / 2 / 3"], rows), machine_line(r))


def _solved(curve: list[dict], ok) -> float:
    rows = [c for c in curve if ok(c)] or curve[:1]
    return rows[-1]["all_fail_now_solved"] / max(rows[-1]["all_fail_prompts"], 1)


def guide_tables(name: str) -> list[str]:
    r = load(name)
    s, b, n, runs = r["meta"]["settings"], r["base"], r["meta"]["settings"]["n"], r["runs"]
    rows = [[arm, *((f"{v['rollouts'][0]:,.0f}", f"{v['steps'][0]:.0f}") if arm in runs else ("–", "–")),
             pm(v["U_solved"]), pm(v["heldout_pass@1"]), pm(v[f"heldout_pass@{n}"]), pm(v["compression_delta"]),
             pm(v["capability_gain_delta"]), pm(v["capability_gain_count"], 1)] for arm, v in r["table"].items()]
    equal = min(x["steps"] for rs in runs.values() for x in rs)
    curve = [[arm, *(pm(ms([_solved(x["curve"], lambda c, f=f: c["rollouts_total"] <= f * s["budget"]) for x in rs]))
                     for f in (0.25, 0.5, 1.0)),
              pm(ms([_solved(x["curve"], lambda c: c["step"] <= equal) for x in rs])),
              f"{sum(x['eval']['heldout_pass@1'] < 0.5 * b['eval']['heldout_pass@1'] for x in rs)} of {len(rs)}"]
             for arm, rs in runs.items()]
    hc = b["hint_check"]
    return [f"Student `{s['student']}`; {s['pool']:,} addition problems, difficulty {s['difficulty']}, hint level "
            f"{s['hint_level']}; U = the {b['U_share']:.0%} whose {s['u_samples']} plain samples all failed before "
            f"(hinted: mean@8 {hc['U_hinted_mean@8']:.3f}, mixed for {hc['U_hinted_mixed']:.0%}); {s['budget']:,} "
            f"completions a run, lr {s['lr']}; held-out {s['heldout']} × {n}; seeds {r['meta']['seeds']}.", "",
            *table(["arm", "rollouts", "steps", f"U solved (of {len(b['U'])})", "held-out pass@1", f"pass@{n}",
                    "Δpass@1 from compression", "from capability gain", "held-out problems gained"], rows),
            "Share of once-all-fail training prompts that the latest plain rollouts solve, along the budget and at "
            "equal steps (collapsed: held-out pass@1 below half the base's):", "",
            *table(["arm", "25 % of budget", "50 %", "100 %", f"at step {equal}", "collapsed"], curve),
            machine_line(r), ""]


def guide_vs_grpo() -> list[str]:
    return section(
        "Does Guide beat GRPO?",
        "`python benchmarks/guide_vs_grpo.py [--quick]`. The claim ([methods.md](methods.md) §3): re-rolling all-fail "
        "prompts with a hint and training through an importance ratio lets the policy learn where GRPO cannot, "
        "so Guide should solve more stuck prompts for the same sampled completions. All arms use dynamic "
        "sampling, 32 prompts × 8 a step, no KL. The base row is a fresh draw of the untrained student (a "
        "control: many \"unsolved\" problems sit at a few per cent per sample); the split is `paced analyze`'s.",
        guide_tables("guide_vs_grpo.json"),
        "Reading: GRPO wins at equal rollouts and is about level at equal steps: hinted groups cost rollouts, and "
        "their mild ratio makes r/(r + γ) mostly scale the gradient down.",
        "**More of the pool stuck**: an earlier student (440 SFT steps), 5–8 digits (`--student "
        "runs/guide/student440/model --student-steps 440 --difficulty 5 8 --arms grpo guide --budget 100000`). "
        "Guide is behind even per step: a hinted group takes a slot dynamic sampling would fill with a solvable "
        "prompt.", guide_tables("guide_vs_grpo_weak_student.json"),
        "**Nearly all stuck**: the same student on 8-digit sums (`--difficulty 8 8`): the same order, no GRPO "
        "collapse. Hints that succeed more often, or a larger model, might turn it; not tried.",
        guide_tables("guide_vs_grpo_stuck_pool.json"), guide_student())


def rl_step_vs_trl() -> list[str]:
    r = load("rl_step_vs_trl.json")
    s, rows = r["settings"], []
    for preset, v in r["results"].items():
        for th, x in v["by_threads"].items():
            c, q = x["contenders"], x["ratios"]
            rows.append([f"{preset} ({v['parameters'] / 1e6:.2f}M), {th}",
                         *(f"{c[k]['median_s']:.3f}" for k in ("ours", "trl", "hand")),
                         f"**{q['ours/trl']:.2f}**", f"**{q['ours/hand']:.2f}**"])
    last = list(r["results"])[-1]
    prof = [[k, ", ".join(f"{p} {v:.3f}" for p, v in x["phases_median_s"].items())]
            for k, x in r["results"][last]["by_threads"]["1"]["contenders"].items()]
    return section(
        "RL step: speed against TRL",
        "`pip install -e '.[bench]'; python benchmarks/rl_step_vs_trl.py [--quick]`. One GRPO step "
        f"({s['prompts_per_step']} prompts × {s['num_generations']} completions of ≤ {s['max_completion_length']} "
        f"tokens, T = {s['temperature']:g}, {s['dtype']}, CPU, `{s['loss_type']}` loss, β = {s['beta']:g}) of "
        "`paced rl`'s real loop, TRL's `GRPOTrainer` (prompt token ids checked equal) and a minimal hand-written "
        f"loop (`generate`, verify, advantages, forward + backward, AdamW), interleaved in {s['block_steps']}-step "
        "blocks. The targets: ≤ 0.8× TRL's time per step, within 5 % of the hand loop. Median s/step:",
        table(["preset, threads", "ours", "TRL", "hand loop", "ours / TRL", "ours / hand"], rows),
        machine_line(r), f"Where the time goes ({last}, 1 thread, median seconds per phase):",
        table(["contender", "phases"], prof),
        "Reading: on the tiny model both targets hold (our sampler beats `generate`). On `small` the TRL target "
        "does not: forward + backward, the same work on every side, is most of the step. Ratios move by about "
        "±0.1 between runs. SmolLM2-135M with vLLM: [real-models.md](real-models.md).")


TRL_NAMES = {"trl_gkd_fkl": "`GKDTrainer` (λ = 0, β = 0)", "trl_gkd_rkl": "`GKDTrainer` (λ = 1, β = 1)",
             "trl_distill_rkl": "`DistillationTrainer` (β = 1)"}


def distill_step() -> list[str]:
    r = load("distill_step.json")
    s, by = r["settings"], r["by_threads"]
    ths = sorted(by, key=int)
    rows = []
    for i, c in enumerate(by[ths[0]]["comparisons"]):
        cs = [by[t]["comparisons"][i] for t in ths]
        j = lambda k, d: " / ".join(f"{x[k]:.{d}f}" for x in cs)  # noqa: E731
        ok = " / ".join("✓" if x["ratio"] <= 0.8 else "✗" for x in cs)
        rows.append([f"{c['comparison']} vs {TRL_NAMES.get(c['trl'], c['trl'])}", j("ours_s", 4), j("trl_s", 4),
                     j("ratio", 2), j("paired_ratio", 2), ok])
    ph = [[f"{k}, {t} thread" + ("s" if t != "1" else ""),
           ", ".join(f"{p} {1000 * v:.1f}" for p, v in by[t]["timing"][k]["phases_median_s"].items())]
          for k in ("ours_fkl", "ours_rkl") for t in ths]
    return section(
        "Distillation step: speed against TRL",
        "`pip install -e '.[bench]'; python benchmarks/distill_step.py [--quick] --threads 1 2`. Student "
        f"`{s['student']}`, teacher `{s['teacher']}`, {s['batch']} addition prompts, {s['max_new_tokens']} new "
        f"tokens, {s['dtype']}; every contender steps in turn in each of up to {s['repeats_max']} repeats "
        "(\"paired\": the median per-repeat ratio). The target: ≤ 0.8× TRL's time. "
        f"Cells: {' / '.join(ths)} thread(s):",
        table(["step", "ours s/step", "TRL s/step", "ours / TRL", "paired", "≤ 0.8"], rows),
        "Median ms per phase, as the loop logs them:", table(["step", "phases (ms)"], ph), machine_line(r),
        "Reading: both wins are caching what the frozen teacher recomputes (`teacher_cache_mib`): off-policy its "
        "hidden states on its own responses, on-policy each prompt's KV cache. At toy sizes these steps measure "
        "framework overhead more than kernels.")


def distill_memory() -> list[str]:
    r = load("distill_memory.json")
    s = r["settings"]
    mem = [[TRL_NAMES.get(k, k), f"{v['rest_mib']:.0f}", f"{v['step_delta_mib']:.1f}", f"{v['step_delta_vs_sft']:.2f}×",
            "" if k == "sft" or k in TRL_NAMES else "✓" if v["step_delta_vs_sft"] <= 1.5 else "✗"]
           for k, v in r["memory"].items() if "error" not in v]
    return section(
        "Distillation step: memory against an SFT step",
        "`python benchmarks/distill_memory.py [--quick]`. The same steps as above (student "
        f"`{s['student']}`, teacher `{s['teacher']}`, {s['batch']} prompts, {s['max_new_tokens']} new tokens), each "
        "in a fresh process: the resting RSS after warm-up (weights, optimizer state, teacher caches) and the peak "
        f"RSS a step adds over {s['steps']} steps, against a student-only SFT step on the same batch. The target: "
        "ours ≤ 1.5× what the SFT step adds.",
        table(["step", "resting MiB", "MiB a step adds", "vs SFT", "≤ 1.5"], mem), machine_line(r))


DIGIT_NAMES = {"sgd": "SGD", "adam": "Adam", "ewc": "EWC (Adam + EWC)", "classp_p1": "CLASSP p = 1",
               "classp_p2": "CLASSP p = 2", "mas": "MAS (Adam + MAS)"}


def continual_digits() -> list[str]:
    r, tables = load("continual_digits.json"), []
    for bench, title in (("permuted", "Permuted-Digits"), ("split", "Split-Digits (task-incremental)")):
        rows = []
        for m, v in r["benchmarks"][bench]["methods"].items():
            sm, uf = v["summary"], v["summary"].get("update_fraction")
            state = sm["optimizer_state_bytes"]["mean"]
            rows.append([DIGIT_NAMES.get(m, m), ", ".join(f"{k} {x:g}" for k, x in v["chosen"].items()),
                         *(pm([sm[k]["mean"], sm[k]["std"]]) for k in ("average_accuracy", "forgetting")),
                         f3(sm["learning_accuracy"]["mean"]), f"{state / 1000:.0f} kB" if state else "0 B",
                         f"{uf['mean']:.0%}" if uf else "–"])
        tables += [f"{title}:", ""] + table(["method", "chosen setting", "avg accuracy", "forgetting",
                                             "learning acc. (plasticity)", "optimizer + regulariser state",
                                             "elements updated a step"], rows)
    c = r["config"]
    return section(
        "CLASSP and EWC: continual learning on digits",
        "`python benchmarks/continual_digits.py [--quick]`. The claim ([methods.md](methods.md) §4): CLASSP forgets less "
        f"than EWC, with less state. Digits, an MLP 64-{c['hidden']}-{c['hidden']}-10, {c['num_tasks']} tasks × "
        f"{c['epochs']} epochs; settings from a {len(r['grids']['sgd'])}-point validation grid, then "
        f"{len(r['seeds'])} test seeds (Avalanche's metrics).", tables, machine_line(r),
        "Reading: on Permuted-Digits CLASSP p = 1 matches or beats EWC with a twelfth of its state and forgets "
        "least; on Split-Digits (nearly saturated) EWC is ahead although CLASSP forgets least. CLASSP p = 1 is "
        "less plastic: its accumulator shrinks steps fast. p = 2 is the most plastic and forgets more.")


STATE = {"adamw": "2 floats", "classp_p1": "1 float", "classp_p2": "1 float", "adamw+ewc": "4 floats"}


def forgetting_in_distill() -> list[str]:
    r = load("forgetting_in_distill.json")
    m = r["meta"]
    rows = [[arm, ", ".join(f"{k} {x:g}" for k, x in r["search"]["chosen"].get(arm, {}).items()) or "the demo's",
             pm(v["target_gain_mean8"]), pm(v["probe_drop_mean8"]), pm(v["probe_drop_greedy"]),
             f3(v["probe_greedy"][0]), STATE.get(arm, "?")] for arm, v in r["table"].items()]
    before = next(iter(r["table"].values()))["before"]["forgetting"]
    return section(
        "### Inside post-training: forgetting during PACED distillation",
        "`python benchmarks/forgetting_in_distill.py [--quick]`. The demo's PACED distillation (forward KL, "
        f"p̂(1−p̂) weights, {m['steps']} steps × {m['batch']}, pool add + mul1) with the optimizer swapped; "
        f"CLASSP's lr / threshold and EWC's λ chosen on a validation split ({m['grid_per_method']} settings each, "
        f"scored by target + probe mean@8); seeds {m['seeds']}, {m['heldout']} held-out problems. Probe before: "
        f"greedy {before['greedy']:.3f}, mean@8 {before['mean@n']:.3f}.",
        table(["arm", "chosen setting", "target (add) gain, mean@8", "probe (sub) drop, mean@8", "probe drop, greedy",
               "probe greedy after", "state per parameter"], rows), machine_line(r),
        "Reading: CLASSP all but removes forgetting at half of AdamW's state and pays with most of the gain; EWC "
        "sits between. The criterion favours settings that barely move; equal-gain comparisons were not run.")


def continual_lm() -> list[str]:
    r = load("continual_lm.json")
    m, t = r["meta"], r["meta"]["tasks"]
    names = {"adamw": f"AdamW (lr {m['adamw_lr']:g})", "adamw+ewc": f"AdamW + EWC (λ {m['ewc_lambda']:.0e})",
             "classp_p1": f"CLASSP p = 1 (lr {m['classp_lr']:g})"}
    rows = [[names.get(arm, arm), f3(R[0][0]), " / ".join(map(f3, R[1][:2])), " / ".join(map(f3, R[2][:3])),
             pm(v["average_accuracy/greedy"]), pm(v["forgetting/greedy"]), STATE.get(arm, "?")]
            for arm, v in r["table"].items() for R in [v["R_mean"]["greedy"]]]
    return section(
        "### A language model, task after task",
        "`python benchmarks/continual_lm.py [--quick]`. A tiny LM (0.14M) given a shared base "
        f"({m['base_steps']:,} SFT steps on 1-digit {', '.join(t)}), then fine-tuned on 2-digit {t[0]}, then "
        f"{t[1]}, then {t[2]} ({m['steps']} steps × {m['batch']} each, optimizer state carried over); greedy "
        f"accuracy on each task after each, seeds {m['seeds']}; settings from a pilot per method on another seed.",
        table(["method", f"after {t[0]}: {t[0]}", f"after {t[1]}: {t[0]} / {t[1]}", f"after {t[2]}: {' / '.join(t)}",
               "avg acc", "forgetting", "state"], rows), machine_line(r),
        "Reading: nothing works here. Every method loses addition once subtraction is trained; EWC at a huge λ "
        "keeps some subtraction but cannot learn multiplication; CLASSP neither protects nor learns as well.")


REAL = ("answer_extractors.json", "rollout_throughput_real.json", "rl_step_vs_trl_real.json", "rl_memory.json",
        "rl_memory_gc.json")
QUICK = ("adaptive_passrate_quick.json", "frontier_rl_quick.json", "guide_vs_grpo_quick.json", "nsr_passk_quick.json",
         "reliability_quick.json")
RELIABILITY = ("reliability.json",)   # its table: docs/reliability.md
DEVICE = ("gpu_check.json", "gpu_check_cpu.json")   # the device check's table: docs/gpu.md
SECTIONS = (rollout_throughput, paced_vs_baselines, snr, adaptive_passrate, nsr_passk, guide_vs_grpo, frontier_rl,
            rl_step_vs_trl, distill_step, distill_memory, continual_digits, forgetting_in_distill, continual_lm)


def render() -> str:
    lines = ["# Benchmarks", "", "<!-- Generated by benchmarks/report.py from benchmarks/results/*.json: do not "
             "edit; rerun `python benchmarks/report.py`. -->", "",
             "What each script in `benchmarks/` measures, the claim it tests, and what its last run found; every "
             "table is read from the JSON it wrote. Most ran on a shared 2-core CPU machine at toy sizes: evidence "
             "about the methods at this scale, to rerun on your hardware. \"The demo's models\" are the demo's as of "
             "each run's date. Results on SmolLM2-135M-Instruct and vLLM are in [real-models.md](real-models.md).", ""]
    for render_section in SECTIONS:
        lines += render_section()
    others = [f for f in sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*.json"))
              if f not in READ | set(REAL) | set(QUICK) | set(RELIABILITY) | set(DEVICE)]
    lines += ["## Other result files", "", "Shown in [real-models.md](real-models.md): "
              + ", ".join(f"`{f}`" for f in REAL) + ". Quick-mode runs (one seed, minutes: a check that a script "
              "works, not a result): " + ", ".join(f"`{f}`" for f in QUICK) + ". The reliability harness's "
              "table: [reliability.md](reliability.md). The device check's (`gpu_check*.json`): [gpu.md](gpu.md)."
              + (" Not rendered by this report yet: " + ", ".join(f"`{f}`" for f in others) + "." if others else "")]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description="Write docs/benchmarks.md from benchmarks/results/*.json.")
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/benchmarks.md is not what this would write")
    text = render()
    if ap.parse_args().check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python benchmarks/report.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
