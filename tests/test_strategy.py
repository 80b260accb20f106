"""Strategy data: validation and JSON round-trip."""
import json

import pytest
from hypothesis import given, strategies as st

from mirrornet_tvm.errors import StrategyError
from mirrornet_tvm.strategy import (DEGRADATIONS, MERGES, OUTPUTS, WIDTH_RATIOS, SecureMemory,
                                    Strategy)

_tap = st.from_regex(r"b[0-9]{1,2}_(relu|maxpool|add|conv)", fullmatch=True)


@given(taps=st.lists(_tap, min_size=1, max_size=4, unique=True),
       width=st.sampled_from(WIDTH_RATIOS), merge=st.sampled_from(MERGES),
       output=st.sampled_from(OUTPUTS), degradation=st.sampled_from(DEGRADATIONS),
       name=st.text(max_size=12))
def test_json_round_trip(taps, width, merge, output, degradation, name):
    s = Strategy(tuple(taps), width, merge, output, degradation, name)
    back = Strategy.from_json(s.to_json())
    assert back == s
    assert json.loads(s.to_json())["taps"] == list(taps)
    assert back.name  # generated when empty


def test_file_round_trip(tmp_path):
    s = Strategy(("b2_relu", "b5_maxpool"), 0.125, "concat", "correction", "adversarial")
    path = s.save(tmp_path / "strategy.json")
    assert Strategy.load(path) == s
    assert s.name == "b2_relu+b5_maxpool-w8-concat-correction-adversarial"


def test_contract_example_parses():
    text = ('{"taps": ["b2_relu", "b4_maxpool"], "width_ratio": 0.125, "merge": "add", '
            '"output": "logits", "degradation": "uniform", "name": "x"}')
    s = Strategy.from_json(text)
    assert s.taps == ("b2_relu", "b4_maxpool") and s.width_ratio == 1 / 8 and s.name == "x"


@pytest.mark.parametrize("data, words", [
    ({"taps": [], "width_ratio": 0.125}, "at least one tap"),
    ({"taps": "b2_relu", "width_ratio": 0.125}, "list of tap names"),
    ({"taps": ["a", "a"], "width_ratio": 0.125}, "repeat"),
    ({"taps": ["a"], "width_ratio": 0.3}, "width_ratio 0.3"),
    ({"taps": ["a"], "width_ratio": "wide"}, "must be a number"),
    ({"taps": ["a"], "width_ratio": 0.5, "merge": "mul"}, "merge must be one of add, concat"),
    ({"taps": ["a"], "width_ratio": 0.5, "output": "probs"}, "output must be"),
    ({"taps": ["a"], "width_ratio": 0.5, "degradation": "none"}, "degradation must be"),
    ({"taps": ["a"], "width_ratio": 0.5, "colour": "red"}, "unknown strategy key(s) colour"),
    ({"width_ratio": 0.5}, "missing taps"),
    ([1, 2], "JSON object"),
])
def test_bad_strategies_name_the_problem(data, words):
    with pytest.raises(StrategyError, match=None) as info:
        Strategy.from_dict(data)
    assert words in str(info.value)


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(StrategyError, match="not valid JSON"):
        Strategy.from_json("{taps")
    with pytest.raises(StrategyError, match="does not exist"):
        Strategy.load(tmp_path / "nope.json")


def test_secure_memory_total():
    m = SecureMemory(weights=100, activations=20, taps=8, logits=40)
    assert m.total == 168 and m.to_dict()["total"] == 168
