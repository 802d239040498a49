"""paced.tasks.files: JSON Lines / Parquet / CHAMP through one rows -> Example path."""
import json

import pytest

from paced.tasks.base import Example
from paced.tasks.files import (DataError, Fields, iter_jsonl, load_champ, load_file,
                               rows_to_examples, write_jsonl)


def write_lines(path, lines):
    path.write_bytes(b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines))
    return path


def js(**row):
    return json.dumps(row)


def test_round_trip(tmp_path):
    exs = [
        Example(id="a", prompt="What is 1+1?", answer="2", source="data"),
        Example(id="b", prompt="Expand (x+1)^2", answer="x^2+2x+1", hint="square it\nthen add",
                solution="... \\boxed{x^2+2x+1}", verifier="math", source="algebra",
                difficulty=3, meta={"tag": ["x"], "n": 1}),
        Example(id="c", prompt="Say 3 + 4 = ?", answer="7", verifier="exact", source="file"),
    ]
    p = tmp_path / "sub" / "data.jsonl"
    write_jsonl(p, exs)
    back, skipped = load_file(p)
    assert skipped == 0
    assert back == exs
    assert [e.meta for e in back] == [e.meta for e in exs]
    nosrc = Example(id="z", prompt="q", answer="1")   # source "" is not written: the file's stem
    write_jsonl(p, [nosrc])
    assert load_file(p)[0][0].source == "data"
    write_jsonl(p, exs[:1])                           # overwrite in place, no temp files left
    assert load_file(p)[0] == exs[:1]
    assert sorted(x.name for x in p.parent.iterdir()) == ["data.jsonl"]


def test_aliases_types_and_hash_ids(tmp_path):
    p = write_lines(tmp_path / "mix.jsonl", [
        js(question="Q1?", final_answer=12, hints=["h1", "h2"]),
        "",                                           # blank lines are skipped
        js(problem="Q2?", answer=2.5, response="because", idx=7),
        js(prompt="Q3?", solution_answer="x", verifier="exact", difficulty=2),
    ])
    exs, skipped = load_file(p)
    assert skipped == 0 and len(exs) == 3
    a, b, c = exs
    assert (a.prompt, a.answer, a.hint) == ("Q1?", "12", "h1\nh2")
    assert a.id.startswith("mix/") and len(a.id) == len("mix/") + 12
    assert (b.prompt, b.answer, b.solution, b.id) == ("Q2?", "2.5", "because", "7")
    assert (c.verifier, c.difficulty, c.source) == ("exact", 2, "mix")
    assert exs == load_file(p)[0]                     # hash ids are stable


def test_custom_fields(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", [js(q="Q?", a="1", key="k1", tip="t", prompt="ignored")])
    fields = Fields(prompt=("q",), answer="a", hint=["tip"], id=("key",))   # a bare str is one name
    (e,), _ = load_file(p, fields=fields, verifier="numeric")
    assert (e.id, e.prompt, e.answer, e.hint, e.verifier) == ("k1", "Q?", "1", "t", "numeric")
    with pytest.raises(DataError, match=r"c\.jsonl:1: missing answer field \(tried 'answer'"):
        load_file(p)                                  # default fields: prompt found, answer not


def test_malformed_json_names_line(tmp_path):
    p = write_lines(tmp_path / "file.jsonl", [js(prompt="a", answer="1"), "", "{not json"])
    with pytest.raises(DataError, match=r"file\.jsonl:3: invalid JSON"):
        load_file(p)
    with pytest.raises(DataError, match=r"file\.jsonl:3"):
        list(iter_jsonl(p))
    p2 = write_lines(tmp_path / "arr.json", ['[{"prompt": "a", "answer": "1"}]'])
    with pytest.raises(DataError, match=r"arr\.json:1: expected a JSON object, got list.*JSON Lines"):
        load_file(p2)


def test_missing_and_bad_fields_name_line_and_field(tmp_path):
    p = write_lines(tmp_path / "f.jsonl", [js(prompt="a", answer="1"), js(prompt="b", ans="2")])
    with pytest.raises(DataError) as e:
        load_file(p)
    msg = str(e.value)
    assert "f.jsonl:2" in msg and "answer" in msg and "'final_answer'" in msg
    for row, what in [({"answer": "1"}, "missing prompt field"),
                      ({"prompt": 5, "answer": "1"}, "'prompt' (prompt) must be a string"),
                      ({"prompt": "a", "answer": [1]}, "'answer' (answer) must be a string or a number"),
                      ({"prompt": "a", "answer": "1", "hint": 3}, "'hint' (hint) must be"),
                      ({"prompt": "a", "answer": "1", "verifier": "sympy"}, "field 'verifier'")]:
        with pytest.raises(DataError, match=r"g\.jsonl:1: .*" + what.replace("(", r"\(").replace(")", r"\)")):
            load_file(write_lines(tmp_path / "g.jsonl", [json.dumps(row)]))


def test_invalid_utf8_names_line(tmp_path):
    p = write_lines(tmp_path / "u.jsonl", [js(prompt="é", answer="1"), b'{"prompt": "\xff\xfe", "answer": "2"}'])
    with pytest.raises(DataError, match=r"u\.jsonl:2: invalid UTF-8"):
        load_file(p)


def test_skip_mode_counts(tmp_path):
    p = write_lines(tmp_path / "s.jsonl", [
        js(id="1", prompt="a", answer="1"),
        "{oops",
        js(id="2", prompt="b"),
        b'{"id": "3", "prompt": "\xff", "answer": "1"}',
        js(id="4", prompt="c", answer="3"),
        js(id="1", prompt="dup", answer="1"),
        "[1, 2]",
    ])
    exs, skipped = load_file(p, on_error="skip")
    assert [e.id for e in exs] == ["1", "4"]
    assert skipped == 5
    with pytest.raises(ValueError):
        load_file(p, on_error="ignore")


def test_duplicate_ids(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [js(id=1, prompt="a", answer="1"), js(id="2", prompt="b", answer="1"),
                                           js(id="1", prompt="c", answer="1")])
    with pytest.raises(DataError, match=r"d\.jsonl:3: duplicate id '1'.*line 1.*line 3"):
        load_file(p)
    exs, skipped = load_file(p, on_error="skip")
    assert [e.prompt for e in exs] == ["a", "b"] and skipped == 1
    same = write_lines(tmp_path / "h.jsonl", [js(prompt="same", answer="1"), js(prompt="same", answer="2")])
    with pytest.raises(DataError, match=r"h\.jsonl:2: duplicate id 'h/"):
        load_file(same)


def test_rows_to_examples_directly():
    exs, skipped = rows_to_examples([(1, {"prompt": "p", "answer": 3})], "mem.jsonl", verifier="exact")
    assert exs[0].answer == "3" and exs[0].verifier == "exact" and exs[0].source == "mem"
    with pytest.raises(ValueError):
        rows_to_examples([], "x", verifier="nope")


def test_parquet_round_trip_and_errors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "question": ["Q1", "Q2"], "answer": ["1", "x+1"],
                             "hints": [["h1", "h2"], None]}), p)
    exs, skipped = load_file(p)
    assert skipped == 0
    assert [(e.id, e.prompt, e.answer, e.hint, e.source) for e in exs] == \
        [("a", "Q1", "1", "h1\nh2", "t"), ("b", "Q2", "x+1", None, "t")]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "answer": ["1", None, "3"]}), bad)
    with pytest.raises(DataError, match=r"bad\.parquet\[row 2\]: missing answer field"):
        load_file(bad)
    assert len(load_file(bad, on_error="skip")[0]) == 2
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"prompt": ["a"]}), nocol)
    with pytest.raises(DataError, match=r"nocol\.parquet\[row 1\]: missing answer field"):
        load_file(nocol)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(DataError, match="junk.parquet"):
        load_file(junk)


def test_load_champ():
    pytest.importorskip("champ_dataset")
    exs, skipped = load_champ()
    assert skipped == 0 and len(exs) > 200
    assert all(e.prompt.strip() and e.answer.strip() for e in exs)
    assert sum(1 for e in exs if e.hint) > 100
    assert len({e.id for e in exs}) == len(exs)
    assert all(e.source == "champ" and e.verifier == "math" for e in exs)
    first = next(e for e in exs if e.id == "P_Combinatorics_1")
    assert first.answer == "239" and "@@" not in first.prompt and first.solution


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "data.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match=r"data\.csv: unknown file type '\.csv'"):
        load_file(tmp_path / "data.csv")
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_file(tmp_path / "nope.jsonl")
