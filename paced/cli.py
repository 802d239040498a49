"""The ``paced`` command line: subcommands only, each calls one function.

    paced <command> --config FILE.yaml [key=value ...] [--run-dir DIR] [--resume]
    paced analyze BEFORE/eval.json AFTER/eval.json [--k K] [--out DIR]
    paced import-gguf FILE.gguf OUT_DIR [--stop-token TOKEN ...]

Every option of a command is listed by ``paced <command> --help``.

Errors a user can cause (a config, an override, a data file, a path, a permission, a missing
package, a size the machine cannot hold) end in one line on stderr naming the file, line or key,
and exit code 2; ``paced --debug <command>`` (or ``PACED_DEBUG=1``) shows the traceback instead.
Anything else is a bug in paced and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import config as C

COMMANDS = {
    # name: (root config, one-line description)
    "sft": (C.SFTConfig, "supervised fine-tuning on reference solutions"),
    "distill": (C.DistillConfig, "PACED distillation: pass-rate-weighted KL from a teacher, in stages"),
    "rl": (C.RLConfig, "RL with verifiable rewards: GRPO, PPO, PSR, NSR, W-REINFORCE"),
    "snr": (C.SNRConfig, "cross-problem gradient SNR of the distillation loss per pass-rate bin"),
    "continual": (C.ContinualConfig, "continual-learning benchmark on digits: CLASSP vs EWC vs SGD/Adam"),
    "passrate": (C.PassrateConfig, "draw K rollouts per problem and record pass rates in the ledger"),
    "eval": (C.EvalConfig, "pass@k, mean@n and greedy accuracy on held-out problems"),
    "ledger": (C.LedgerConfig, "inspect the pass-rate ledger: runs and the p-hat histogram"),
    "demo": (C.DemoConfig, "end-to-end demo on CPU: teacher + student SFT, pass rates, evaluation"),
}
# take paths instead of a config
ANALYZE = "split a pass@1 gain into compression and capability gain (two 'paced eval' results)"
IMPORT_GGUF = "convert a GGUF model file into a Hugging Face model directory (dequantised to fp32)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paced", description="Frontier-aware post-training of reasoning language models.",
        epilog="Run 'paced <command> --help' for every option of a command.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also PACED_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (root, desc) in COMMANDS.items():
        p = sub.add_parser(name, help=desc, description=desc,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="options (set in the YAML file or as key=value):\n" + C.describe(root))
        p.add_argument("--config", help="YAML config file (sections as in configs/)")
        p.add_argument("--run-dir", help="run directory (same as run.dir=...)")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="override any option, e.g. optim.lr=3e-4 'eval.ks=[1,4]'")
        if name in ("sft", "distill", "rl", "demo"):
            p.add_argument("--resume", action="store_true",
                           help="continue from the newest complete checkpoint in the run directory")
        if name == "ledger":
            p.add_argument("--path", help="ledger file or run directory (same as ledger.path=...)")
    p = sub.add_parser("analyze", help=ANALYZE, description=ANALYZE)
    p.add_argument("before", help="eval.json of the model before training (or its run directory)")
    p.add_argument("after", help="eval.json of the model after training (or its run directory)")
    p.add_argument("--k", type=int, help="k of pass@k (default: the largest, n of BEFORE)")
    p.add_argument("--out", help="where analyze.json and analyze.png go (default: AFTER's directory)")
    p = sub.add_parser("import-gguf", help=IMPORT_GGUF, description=IMPORT_GGUF)
    p.add_argument("gguf", help="the .gguf file")
    p.add_argument("out", help="the new model directory (must not exist or be empty)")
    p.add_argument("--stop-token", action="append", default=[], metavar="TOKEN",
                   help="a token that also ends generation (repeatable), e.g. '<|endoftext|>'")
    return parser


# What a user's input can raise (and so ends in one line): configs, data, paths, permissions,
# encodings (UnicodeError), missing packages, sizes. RecursionError / MemoryError: a structure or size past what
# the machine holds. RuntimeError: torch's (out of memory, a shape a model cannot take).
USER_ERRORS = (ValueError, OSError, ImportError, RecursionError, MemoryError, FloatingPointError,
               RuntimeError)   # UnicodeError, ConfigError, DataError are ValueErrors


def one_line(e: BaseException) -> str:
    """The error's message on one line (an OSError keeps its file name)."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    else:
        msg = str(e) or type(e).__name__
    if isinstance(e, (RecursionError, MemoryError)):
        msg = f"{type(e).__name__}: {msg} (an input nested or sized beyond what this machine holds)"
    return " ".join(msg.split())


VALUED = ("--config", "--run-dir", "--path", "--k", "--out")   # options that take a value


def split_argv(argv: list[str]) -> list[str]:
    """``key=value`` overrides may come anywhere after the command, before or after ``--run-dir
    DIR``: argparse's one positional list stops at the first option, so they move to just after
    the command name."""
    cmd = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if cmd is None or argv[cmd] not in COMMANDS:
        return argv
    head, overrides, rest = argv[:cmd + 1], [], []
    for i, a in enumerate(argv[cmd + 1:], cmd + 1):
        takes_value = argv[i - 1] in VALUED and i - 1 > cmd
        (overrides if "=" in a and not a.startswith("-") and not takes_value else rest).append(a)
    return head + overrides + rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(split_argv(argv))
    debug = args.debug or os.environ.get("PACED_DEBUG", "") not in ("", "0")
    if not args.command:
        parser.print_help()
        return 2
    cfg = None
    try:
        if args.command in COMMANDS:
            try:
                cfg = C.load_config(COMMANDS[args.command][0], args.config, args.overrides, args.run_dir)
            except C.ConfigError as e:
                if debug:
                    raise
                print(f"paced {args.command}: config error: {one_line(e)}", file=sys.stderr)
                return 2
        _dispatch(args, cfg)
    except USER_ERRORS as e:
        if debug:
            raise
        from .tasks.files import DataError
        kind = "data error" if isinstance(e, DataError) else "error"
        print(f"paced {args.command}: {kind}: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paced {args.command}: interrupted (a training run resumes with --resume)", file=sys.stderr)
        return 130
    return 0


def _dispatch(args, cfg) -> None:
    if args.command == "sft":
        from .train.sft import train
        train(cfg, resume=args.resume)
    elif args.command == "distill":
        from .train.distill import train
        train(cfg, resume=args.resume)
    elif args.command == "rl":
        from .train.rl import train
        train(cfg, resume=args.resume)
    elif args.command == "snr":
        from .analysis.snr import run
        run(cfg)
    elif args.command == "continual":
        from .train.continual import run
        run(cfg)
    elif args.command == "passrate":
        from .passrate import run
        run(cfg)
    elif args.command == "eval":
        from .evaluate import run
        run(cfg)
    elif args.command == "ledger":
        from .passrate import inspect
        inspect(cfg, args.path)
    elif args.command == "demo":
        from .demo import run
        run(cfg, resume=args.resume)
    elif args.command == "analyze":
        from .analysis.compression import run
        run(args.before, args.after, args.k, args.out)
    elif args.command == "import-gguf":
        from .hub import import_gguf
        from .runlog import console
        out = import_gguf(args.gguf, args.out, stop_tokens=tuple(args.stop_token))
        console.print(f"wrote {out}: use it as model.path={out}")


if __name__ == "__main__":
    sys.exit(main())
