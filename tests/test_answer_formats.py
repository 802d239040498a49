"""Answer formats (paced.tasks.formats): extractors, instructions, templates, config checks, and
agreement with human readings of real SmolLM2-135M-Instruct answers."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from paced.config import ConfigError, DataSource, EvalConfig, load_config
from paced.tasks import load_source, verify
from paced.tasks.answers import normalize, numeric_equal
from paced.tasks.base import Example
from paced.tasks.files import DataError, load_file, write_jsonl
from paced.tasks.formats import ANSWER_FORMATS, INSTRUCTIONS, TAIL, apply_template, extract, extract_answer

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "benchmarks" / "data" / "smollm2_answers.jsonl"


# --- the extractors on typical text ----------------------------------------------------------
CASES = {
    "boxed": [("so \\boxed{92}.", "92"), ("\\boxed{1} then \\boxed{ 2 }", "2"), ("\\boxed{}", None),
              ("92", None), ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"), ("\\boxed{3", None)],
    "last_number": [("440 + 51 = 95", "95"), ("The answer is 9.", "9"), ("57-35", "35"),
                    ("x = -4", "-4"), ("1,234 apples, 5, 6", "6"), ("costs 1,234.", "1,234"),
                    ("no digits", None), ("3/4 of it", "3/4"), ("0.5", "0.5"), ("", None)],
    "gsm8k": [("#### 108", "108"), ("so #### $1,080 in all", "1,080"), ("####\n42", "42"),
              ("#### 1\n#### 2.", "2"), ("#### x^2+1", "x^2+1"), ("#### 3x", "3x"),
              ("no marker 5", None), ("####", None)],
    "answer_is": [("The answer is: 9", "9"), ("**The answer is: 9**", "9"), ("answer is 12 apples.", "12"),
                  ("The final answer is $\\boxed{12}$.", "12"), ("Answer: 7", "7"),
                  ("the answer is 2x+1.", "2x+1"), ("The answer is 3. Wait, the answer is 4", "4"),
                  ("no such sentence 5", None), ("The answer is:", None)],
}


@pytest.mark.parametrize("fmt,text,want", [(f, t, w) for f, cs in CASES.items() for t, w in cs])
def test_extractor_typical(fmt, text, want):
    assert ANSWER_FORMATS[fmt](text, None) == want
    assert extract(text, fmt) == want


AUTO_TEXTS = ["0002=", "12+34=46", "\\boxed{3}", "x #### 7", "a = b\nc", "the end 5 6", "", "=",
              "no answer", "{" * 50 + "\\boxed{1}", "1 = 2 = 3", "#### ", "9" * 5000]


@pytest.mark.parametrize("text", AUTO_TEXTS)
def test_auto_is_extract_answer(text):
    assert ANSWER_FORMATS["auto"](text, None) == extract_answer(text) == extract(text, "auto")


def test_regex_group_and_whole_match():
    rx = ANSWER_FORMATS["regex"]
    assert rx("ans=3 ans=4", r"ans=(\d+)") == "4"
    assert rx("1 2 33", r"\d+") == "33"
    assert rx("ans=(x)", r"ans=(\d+)?") is None  # group 1 did not take part
    assert rx("nothing", r"ans=(\d+)") is None
    assert rx("ans=3", "(unclosed") is None
    assert rx("ans=3", None) is None
    assert rx("x" * (2 * TAIL) + "ans=5", r"ans=(\d)") == "5"
    assert rx("ans=5" + "x" * (2 * TAIL), r"ans=(\d)") is None  # only the tail is searched


def test_every_format_has_an_instruction_and_a_config_choice():
    from paced.config import DataSource as DS
    from dataclasses import fields
    choices = next(f for f in fields(DS) if f.name == "answer_format").metadata.get("choices")
    assert set(ANSWER_FORMATS) == set(INSTRUCTIONS)
    if choices:
        assert set(choices) == set(ANSWER_FORMATS)
    assert INSTRUCTIONS["auto"] == INSTRUCTIONS["regex"] == ""
    assert INSTRUCTIONS["boxed"] == "Put your final answer within \\boxed{}."
    assert INSTRUCTIONS["gsm8k"] == "Write your final answer after '####'."
    assert extract("#### 3", "no-such-format") is None


# --- hostile input: total and fast -----------------------------------------------------------
HOSTILE = ["9" * 1_000_000, "{" * 100_000, "\\boxed{" * 100_000, "#### " * 200_000,
           "answer is " * 100_000, "answer" + " " * 1_000_000, "-" * 1_000_000, "1," * 500_000,
           "a" * 1_000_000 + "The answer is: 5", "\\boxed{" + "{" * 100_000 + "}" * 100_000 + "}",
           "=" * 1_000_000, "\n" * 1_000_000, "\x00\ud800" * 1000]


@pytest.mark.parametrize("fmt", list(ANSWER_FORMATS))
def test_extractors_total_and_fast_on_hostile_text(fmt):
    for text in HOSTILE + [None, 3, b"#### 3"]:
        start = time.perf_counter()
        got = ANSWER_FORMATS[fmt](text, r"(\d+)\s*$")
        assert got is None or isinstance(got, str)
        assert time.perf_counter() - start < 1.0, (fmt, repr(text)[:40])


def test_hostile_specifics():
    assert extract("9" * 1_000_000, "last_number") is None   # longer than the window: no answer
    assert extract("a" * 1_000_000 + "The answer is: 5", "answer_is") == "5"
    assert extract("x" * 1_000_000 + " 42", "last_number") == "42"


# --- verifiers read the example's format -----------------------------------------------------
def _ex(fmt="auto", verifier="numeric", answer="92", rx=None):
    return Example(id="t", prompt="What is 57 + 35?", answer=answer, verifier=verifier,
                   answer_format=fmt, answer_regex=rx)


@pytest.mark.parametrize("verifier", ["numeric", "math", "exact"])
def test_verifiers_use_the_format(verifier):
    assert verify("The answer is \\boxed{92}.", _ex("boxed", verifier))
    assert not verify("57 + 35 = 92", _ex("boxed", verifier))
    assert verify("57 + 35 = 92. So 92", _ex("last_number", verifier))
    assert verify("work\n#### 92", _ex("gsm8k", verifier))
    assert verify("57 + 35 = 92\nThe answer is: 92", _ex("answer_is", verifier))
    assert not verify("The answer is: 91", _ex("answer_is", verifier))
    assert verify("<ans>92</ans>", _ex("regex", verifier, rx=r"<ans>(.*?)</ans>"))
    assert not verify("", _ex("regex", verifier, rx=r"<ans>(.*?)</ans>"))


def test_auto_prefers_explicit_markers():
    # box > #### > "the answer is" > the rest of the line after the last "=" > the last number
    assert verify("57 + 35 = 92", _ex()) and verify("57 + 35 = 92. The answer is 92.", _ex())
    assert verify("The answer is 3, not 4", _ex(answer="3"))
    assert not verify("The answer is 3, not 4", _ex(answer="4"))
    assert not verify("The answer is 91. Check: 57 + 35 = 92", _ex())
    assert verify("The answer is 91, or rather \\boxed{92}", _ex())
    assert verify("1+1=0002", Example(id="c", prompt="1+1=", answer="0002", verifier="exact"))
    assert verify("\\boxed{92}", _ex(verifier="math"))


# --- templates, ids, load_source -------------------------------------------------------------
def test_apply_template():
    assert apply_template("Q?", "{prompt}", "boxed") == "Q?"
    assert apply_template("Q?", "{prompt} {instruction}", "boxed") == \
        "Q? Put your final answer within \\boxed{}."
    assert apply_template("Q {x}?", "{instruction}\n{prompt}", "auto") == "Q {x}?"


def test_load_source_synthetic_template_keeps_ids():
    plain = DataSource(source="add", n=5, style="natural", difficulty=[1, 2])
    fmt = replace(plain, answer_format="gsm8k", prompt_template="{prompt} {instruction}")
    a, _ = load_source(plain)
    b, _ = load_source(fmt)
    assert [e.id for e in a] == [e.id for e in b]
    assert all(y.prompt == f"{x.prompt} Write your final answer after '####'." for x, y in zip(a, b))
    assert all(e.answer_format == "gsm8k" and e.solution.endswith(f"#### {e.answer}") for e in b)
    assert all(verify(e.solution, e) for e in b)
    assert [e.hint for e in a] == [e.hint for e in b]


def test_load_source_file_template_keeps_hash_ids(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                         for i in range(3)))
    plain, _ = load_source(DataSource(source=str(p)))
    tmpl, _ = load_source(DataSource(source=str(p), answer_format="answer_is",
                                     prompt_template="{instruction} {prompt}"))
    assert [e.id for e in plain] == [e.id for e in tmpl]
    assert tmpl[0].prompt == 'End with "The answer is: <answer>". What is 0 + 1?'
    assert verify("The answer is: 1", tmpl[0]) and not verify("The answer is: 2", tmpl[0])
    rx, _ = load_source(DataSource(source=str(p), answer_format="regex", answer_regex=r"=\s*(\d+)"))
    assert rx[2].answer_regex == r"=\s*(\d+)" and verify("2 + 1 = 3", rx[2])
    with pytest.raises(ValueError, match="has answer_format 'regex' but no answer_regex"):
        load_source(DataSource(source=str(p), answer_format="regex"))
    with pytest.raises(ValueError, match="style 'natural' applies to synthetic families only"):
        load_source(DataSource(source=str(p), style="natural"))


def test_row_answer_format_round_trips_and_is_checked(tmp_path):
    ex = [replace(e, source="e") for e in
          (_ex("boxed"), replace(_ex("regex", rx=r"(\d+)"), id="u"), replace(_ex(), id="v"))]
    assert "answer_format" not in ex[2].to_row()
    write_jsonl(tmp_path / "e.jsonl", ex)
    back, _ = load_file(tmp_path / "e.jsonl")
    assert back == ex
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "answer": "1"}\n{"prompt": "q2", "answer": "1", "answer_format": "xml"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'answer_format' is 'xml', not one of auto"):
        load_file(bad)
    bad.write_text('{"prompt": "q", "answer": "1", "answer_format": "regex", "answer_regex": "(x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'answer_regex' '\(x' does not compile"):
        load_file(bad)


# --- config-load checks ----------------------------------------------------------------------
def _load(src: str):
    return load_config(EvalConfig, None, ["model.preset=nano", f"data.eval=[{src}]"])


@pytest.mark.parametrize("src,msg", [
    ("{source: add, answer_format: regex}",
     r"data.eval\[0\].answer_regex: answer_format 'regex' needs a pattern"),
    ("{source: add, answer_format: regex, answer_regex: '(x'}",
     r"data.eval\[0\].answer_regex: '\(x' does not compile: missing \), unterminated subpattern"),
    ("{source: add, answer_regex: 'x(\\d)'}",
     r"data.eval\[0\].answer_regex: used only with answer_format 'regex' \(answer_format is 'auto'\)"),
    ("{source: add, prompt_template: '{instruction}'}",
     r"data.eval\[0\].prompt_template: '\{instruction\}' does not use \{prompt\}"),
    ("{source: add, prompt_template: '{prompt} {hint}'}",
     r"data.eval\[0\].prompt_template: '\{prompt\} \{hint\}' uses \['hint'\]: only \{prompt\} and "
     r"\{instruction\} are filled in"),
    ("{source: add, prompt_template: '{prompt'}",
     r"data.eval\[0\].prompt_template: '\{prompt' is not a format string"),
    ("{source: q.jsonl, style: natural}",
     r"data.eval\[0\].style: 'natural' applies to synthetic families only \(add, sub, mul1, modular, "
     r"countdown\), not 'q.jsonl'"),
])
def test_config_errors(src, msg):
    with pytest.raises(ConfigError, match=msg):
        _load(src)


def test_config_accepts_formats():
    cfg = _load("{source: add, style: natural, answer_format: regex, answer_regex: 'is (\\d+)', "
                "prompt_template: '{prompt} {instruction}'}")
    assert cfg.data.eval[0].answer_regex == "is (\\d+)"


# --- real answers: agreement with the human reading ------------------------------------------
# Measured 2026-12-02 (2-core CPU, shared) on benchmarks/data/smollm2_answers.jsonl, 320
# SmolLM2-135M-Instruct completions labelled by hand (benchmarks/answer_extractors.py): share of
# completions where the extractor returns the human-read answer. Floors sit a few points under.
#   the instruction's own format, all rows   145/320 = 0.453  (the model never writes '####' and
#                                                              only empty boxes: strict formats read
#                                                              nothing where people read an answer)
#   auto, all rows                           262/320 = 0.819  (0.812 before "the answer is" came
#                                                              before "=": the issue-13 precedence)
#   last_number, all rows                    255/320 = 0.797
#   answer_is, rows instructed answer_is       45/64 = 0.703
AGREE_FLOORS = {"matched": 0.42, "auto": 0.79, "last_number": 0.76, "answer_is": 0.65}


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return normalize(a) == normalize(b) or bool(numeric_equal(a, b))


@pytest.mark.skipif(not LABELS.is_file(), reason="no labelled completions")
def test_extractors_agree_with_human_labels():
    rows = [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("labelled", True)]
    assert len(rows) >= 300 and {r["format"] for r in rows} == {"auto", "boxed", "last_number",
                                                                 "gsm8k", "answer_is"}
    rate = lambda rs, fmt=None: sum(  # noqa: E731
        _same(extract(r["completion"], fmt or r["format"]), r["human_answer"]) for r in rs) / len(rs)
    got = {"matched": rate(rows), "auto": rate(rows, "auto"), "last_number": rate(rows, "last_number"),
           "answer_is": rate([r for r in rows if r["format"] == "answer_is"], "answer_is")}
    low = {k: round(v, 3) for k, v in got.items() if v < AGREE_FLOORS[k]}
    assert not low, f"extractors agree with the human reading less than measured: {low} < {AGREE_FLOORS}"


# --------------------------------------------------------------------------- cut at the length limit
@pytest.mark.parametrize("text, fmt, credited", [
    ("so 2+3=5", "auto", False),                           # "= ..." tail: the cut may split it (=57)
    ("the sum is 5", "auto", False),                       # a last number, never
    ("the sum is \\boxed{5} and then", "auto", True),      # a closed box
    ("the sum is \\boxed{5", "auto", False),               # a box the cut left open
    ("work\n#### 5\nmore wo", "auto", True),               # a #### line a newline ends
    ("work\n#### 5", "auto", False),                       # ... not one the cut may have split
    ("The answer is 5.\nLet me check", "auto", True),
    ("The answer is 5", "auto", False),
    ("The answer is: 5\nwhy", "answer_is", True),
    ("ANS=5; rest", "regex", True),                        # the user's pattern, ending before the cut
    ("ANS=5", "regex", False),
    ("5\n", "last_number", False),                         # last_number has no explicit marker
])
def test_a_cut_completion_needs_an_explicit_final_answer(text, fmt, credited):
    ex = Example(id="x", prompt="2+3=", answer="5", verifier="numeric", answer_format=fmt,
                 answer_regex=r"ANS=(\d+)" if fmt == "regex" else None)
    assert verify(text, ex, finished=False) is credited
    assert verify(text, ex, finished=True)   # each reads 5 when the model stopped by itself


def test_cut_completions_are_not_credited_in_eval(tmp_path):
    """End to end: with completions cut at 1 token, every finished=False row of eval.json is wrong
    unless its text carries a final answer."""
    from paced.evaluate import rollout_and_verify
    from paced.rollout import SamplingParams
    from paced.rundir import load_model
    from paced.tasks.synthetic import generate
    model, tok, _ = load_model(None, "nano", 0, "float32", tmp_path)
    exs = generate("add", 6, 0, (1, 1))
    ro, texts, rewards = rollout_and_verify(model, tok, exs, SamplingParams(n=4, max_tokens=2, seed=0))
    cut = ~ro.finished
    assert cut.any()
    assert all(r == 0 for r, c in zip(rewards.tolist(), cut.tolist()) if c)
