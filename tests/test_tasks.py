"""Data sources from the config, verifier dispatch, CHAMP through the files path, hostile text."""
import json
import time

import pytest

from paced.config import DataCfg, load_config
from paced.tasks import load_source, load_sources, verify
from paced.tasks.files import DataError


def sources(*raw):
    return load_config(DataCfg, None, [f"train={json.dumps(list(raw))}"]).train


def test_synthetic_source_and_verify():
    (src,) = sources({"source": "modular", "n": 20, "difficulty": [1, 4], "seed": 3})
    exs, skipped = load_source(src)
    assert len(exs) == 20 and skipped == 0
    for e in exs:
        assert verify(e.solution, e)
        assert not verify(e.solution + "0", e)


def test_single_difficulty_and_verifier_override():
    (src,) = sources({"source": "add", "n": 5, "difficulty": 3, "verifier": "numeric"})
    exs, _ = load_source(src)
    assert {e.difficulty for e in exs} == {3} and {e.verifier for e in exs} == {"numeric"}


def test_duplicate_ids_across_sources_rejected():
    with pytest.raises(ValueError, match="duplicate problem id"):
        load_sources(sources({"source": "add", "n": 3}, {"source": "add", "n": 3}))
    assert len(load_sources(sources({"source": "add", "n": 3}, {"source": "add", "n": 3, "seed": 1}))) == 6


def test_file_source_with_custom_fields(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"{i}+{i}=", "a": str(2 * i), "key": f"k{i}"})
                              for i in range(5)) + "\n")
    (src,) = sources({"source": str(path), "prompt_field": "q", "answer_field": "a",
                      "id_field": "key", "n": 3})
    exs, _ = load_source(src)
    assert [e.id for e in exs] == ["k0", "k1", "k2"]
    assert verify("so the answer is \\boxed{4}", exs[2]) and not verify("\\boxed{5}", exs[2])


def test_bad_file_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x", "answer": "1"}\n{"prompt": "y"}\n')
    (src,) = sources({"source": str(path)})
    with pytest.raises(DataError, match=r"bad.jsonl:2.*answer"):
        load_source(src)
    (src,) = sources({"source": str(path), "on_error": "skip"})
    exs, skipped = load_source(src)
    assert len(exs) == 1 and skipped == 1


def test_champ_loads_through_the_same_path():
    (src,) = sources({"source": "champ", "n": 50})
    exs, skipped = load_source(src)
    assert len(exs) == 50 and skipped == 0
    assert all(e.prompt and e.answer and e.verifier == "math" for e in exs)
    assert sum(e.hint is not None for e in exs) > 25
    assert verify(f"\\boxed{{{exs[0].answer}}}", exs[0])


@pytest.mark.parametrize("hostile", [
    "10^10^10^10", "\\boxed{10^{10^{10^{10}}}}", "9**9**9**9", "(" * 100_000 + "1" + ")" * 100_000,
    "\\boxed{" + "{" * 100_000 + "}" * 100_000 + "}", "1" * 1_000_000,
])
def test_hostile_completions_are_fast_wrong_answers(hostile):
    exs, _ = load_source(sources({"source": "champ", "n": 3})[0])
    synth, _ = load_source(sources({"source": "countdown", "n": 2, "difficulty": [3, 3]})[0])
    for e in [*exs, *synth]:
        t0 = time.perf_counter()
        assert verify(hostile, e) is False
        assert time.perf_counter() - t0 < 2.0
