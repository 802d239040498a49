"""Reward functions: calling, checking, weighting, None handling and loading from a spec."""
import math
import textwrap

import numpy as np
import pytest
import torch

from paced.rewards import (REWARDS, compute_rewards, function_name, load_reward_function,
                           verifier_reward)
from paced.tasks import Example

EXAMPLES = [Example(id=f"q{i}", prompt=f"{i}+1=", answer=str(i + 1), verifier="exact", source="add")
            for i in range(3)]
PROMPTS = [e.prompt for e in EXAMPLES]
COMPLETIONS = ["1", "5", "3"]  # right, wrong, right


def rewards(funcs, weights=None, completions=COMPLETIONS):
    return compute_rewards(funcs, weights, PROMPTS, completions, EXAMPLES)


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def a_string(prompts, completions, **kwargs):
    return [1.0, "high", 0.0]


def a_nan(prompts, completions, **kwargs):
    return [0.0, 1.0, math.nan]


def not_a_list(prompts, completions, **kwargs):
    return np.ones(len(completions))


def only_first(prompts, completions, **kwargs):
    return [2.0] + [None] * (len(completions) - 1)


def never(prompts, completions, **kwargs):
    return [None] * len(completions)


def test_verifier_is_the_default_and_sees_the_kwargs():
    assert REWARDS["verifier"] is verifier_reward
    assert rewards([verifier_reward]).tolist() == [1.0, 0.0, 1.0]
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(kwargs, prompts=prompts, completions=completions)
        return [0] * len(completions)

    rewards([spy])
    assert seen["answer"] == ["1", "2", "3"] and seen["id"] == ["q0", "q1", "q2"]
    assert seen["source"] == ["add"] * 3 and seen["example"] == EXAMPLES
    assert seen["prompts"] == PROMPTS and seen["completions"] == COMPLETIONS


def test_good_function_bools_numpy_and_weights():
    out = rewards([length_reward], completions=["a", "bb", "ccc"])
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 2.0, 3.0]
    mixed = lambda prompts, completions, **kw: [True, np.float32(0.5), np.int64(2)]  # noqa: E731
    assert rewards([mixed]).tolist() == [1.0, 0.5, 2.0]
    out = rewards([verifier_reward, length_reward], [2.0, -0.5], ["1", "55", "3"])
    assert out.tolist() == [2.0 - 0.5, 0.0 - 1.0, 2.0 - 0.5]


def test_weights_must_match_the_functions():
    with pytest.raises(ValueError, match=r"1 reward weights for 2 reward functions.*length_reward"):
        rewards([verifier_reward, length_reward], [1.0])


@pytest.mark.parametrize("fn, message", [
    (wrong_length, r"test_rewards\.wrong_length returned 1 rewards for 3 completions"),
    (a_string, r"test_rewards\.a_string: row 1 is 'high' \(str\), not a number or None"),
    (a_nan, r"test_rewards\.a_nan: row 2 is nan; rewards must be finite"),
    (not_a_list, r"test_rewards\.not_a_list returned a ndarray; return a list"),
])
def test_bad_results_name_the_function_and_row(fn, message):
    with pytest.raises(ValueError, match=message):
        rewards([verifier_reward, fn])


def test_inf_and_complex_are_rejected():
    inf = lambda prompts, completions, **kw: [0.0, -math.inf, 0.0]  # noqa: E731
    with pytest.raises(ValueError, match=r"<lambda>: row 1 is -inf"):
        rewards([inf])
    cplx = lambda prompts, completions, **kw: [0.0, 0.0, 1j]  # noqa: E731
    with pytest.raises(ValueError, match=r"<lambda>: row 2 is 1j \(complex\)"):
        rewards([cplx])


def test_none_means_no_reward_from_that_function():
    # row 0: 1·verifier + 3·2.0; rows 1, 2: only the verifier counts
    assert rewards([verifier_reward, only_first], [1.0, 3.0]).tolist() == [7.0, 0.0, 1.0]


def test_a_row_nobody_rewards_is_an_error():
    with pytest.raises(ValueError, match=r"test_rewards\.only_first, test_rewards\.never all returned "
                                         r"None for row 1 \(example 'q1'\)"):
        rewards([only_first, never])


def test_rows_must_line_up():
    with pytest.raises(ValueError, match="3 prompts, 2 completions and 3 examples"):
        rewards([verifier_reward], completions=["1", "2"])


def test_function_name():
    assert function_name(verifier_reward) == "paced.rewards.verifier_reward"


# ---------------------------------------------------------------------------------------------
# load_reward_function
# ---------------------------------------------------------------------------------------------
USER_FILE = textwrap.dedent("""
    def short(prompts, completions, **kwargs):
        return [1.0 if len(c) < 3 else 0.0 for c in completions]

    class Judge:
        @staticmethod
        def score(prompts, completions, **kwargs):
            return [0.5] * len(completions)

    THRESHOLD = 3
""")


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


def test_load_from_a_file(user_file):
    fn = load_reward_function(f"{user_file}:short")
    assert rewards([fn], completions=["1", "1234", "12"]).tolist() == [1.0, 0.0, 1.0]
    assert load_reward_function(f"{user_file}:Judge.score")(["p"], ["c"]) == [0.5]


def test_load_from_a_module(user_file, monkeypatch):
    monkeypatch.syspath_prepend(str(user_file.parent))
    assert load_reward_function("my_rewards:short")(["p"], ["abcd"]) == [0.0]
    assert load_reward_function("paced.rewards:verifier_reward") is verifier_reward


@pytest.mark.parametrize("spec, message", [
    ("{dir}/nope.py:short", r"'{dir}/nope.py:short': file '{dir}/nope.py' not found"),
    ("{dir}/my_rewards.py:missing", r"'{dir}/my_rewards.py:missing': '{dir}/my_rewards.py' has "
                                    r"no attribute 'missing'"),
    ("{dir}/my_rewards.py:THRESHOLD", r"'{dir}/my_rewards.py:THRESHOLD': 'THRESHOLD' is a int, "
                                      r"not a function"),
    ("no_such_module_xyz:fn", r"'no_such_module_xyz:fn': module 'no_such_module_xyz' not found"),
    ("paced.rewards:nothing_here", r"'paced.rewards:nothing_here': 'paced.rewards' has no "
                                   r"attribute 'nothing_here'"),
    ("just_a_name", r"'just_a_name': expected 'package.module:function'"),
])
def test_load_errors_name_the_spec(user_file, spec, message):
    d = str(user_file.parent)
    with pytest.raises(ValueError, match=message.replace("{dir}", d)):
        load_reward_function(spec.replace("{dir}", d))


def test_a_file_that_fails_to_run_names_the_spec(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match=r"broken.py:fn': running .* failed: RuntimeError: boom"):
        load_reward_function(f"{bad}:fn")
