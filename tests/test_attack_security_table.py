"""bench/security_table.py's bookkeeping: recipe artifacts, the target's criteria, the table's rows."""
import importlib.util
import json
from pathlib import Path

import pytest

from mirrornet_tvm.strategy import Strategy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def st():
    spec = importlib.util.spec_from_file_location("security_table", ROOT / "bench" / "security_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(budget, ratio, gap, authorized=0.905, flop_share=0.05, variant="recipe", objective="adversarial"):
    label = {0.001: "0.1%", 0.01: "1%", 0.1: "10%"}[budget]
    return {"model": "lenet", "degradation": "adversarial", "objective": objective, "variant": variant,
            "strategy": "s", "original": 0.91, "authorized": authorized, "flop_share": flop_share,
            "budget": budget, "budget_label": label, "ratio": ratio, "gap_closed": gap, "status": "ok"}


def test_recipes_are_valid_strategies_with_their_own_folders(st, tmp_path):
    names = [r["name"] for r in st.RECIPES]
    assert len(set(names)) == len(names)
    for r in st.RECIPES:
        s = Strategy(tuple(r["taps"]), r["width"], "add", "logits", r["degradation"])
        assert st.art_dir(tmp_path, r["model"], s, r).name == f"{s.name}-{r['name']}"
        assert st.art_dir(tmp_path, r["model"], s).name == s.name
        flags = st._recipe_flags(r)
        for key, value in r["config"].items():
            assert f"--{key.replace('_', '-')} {value:g}" in flags


def test_criteria_name_every_failure(st):
    ok = [_row(0.001, 1.0, 0.0), _row(0.01, 1.04, 0.2), _row(0.1, 1.01, 0.1)]
    assert all(st._criteria(ok).values())
    bad = [_row(0.001, 1.06, 0.3, authorized=0.89), _row(0.01, 1.0, 0.1), _row(0.1, 1.2, 0.5)]
    failed = {k for k, v in st._criteria(bad).items() if not v}
    assert failed == {"authorized within 1 point", "<= 1.05x black-box at 0.1%", "gap closed <= 25% at 0.1%",
                      "gap closed <= 25% at 10%"}   # the ratio rule applies at 0.1% and 1% only
    assert not st._criteria([_row(0.001, 1.0, 0.0, flop_share=0.12)])["CPM < 10% FLOPs"]


def test_target_check_separates_the_default_from_other_strategies(st):
    rows = [_row(0.001, 1.1, 0.4, variant="default (--auto)"), _row(0.001, 1.0, 0.0, objective="adv + recipe")]
    lines = st.target_check(rows)
    assert "target not met" in lines[0] and "default strategy" in lines[0]
    assert any("adv + recipe" in line and "all criteria met" in line for line in lines[1:])
    assert "TARGET MET" not in "\n".join(lines)


def test_table_reads_a_recipe_artifact(st, tmp_path):
    s = Strategy(("b1_maxpool",), 0.25, "add", "logits", "adversarial")
    recipe = {"name": "r1", "label": "+ r1", "config": {"adv": 0.1}}
    art = st.art_dir(tmp_path, "lenet", s, recipe)
    art.mkdir(parents=True)
    (art / "metrics.json").write_text(json.dumps({
        "cpm": {"flop_share": 0.058}, "secure_memory": {"total": 50000},
        "accuracy": {"original": 0.91, "authorized": 0.86, "illegal": 0.1}, "training": {"config": {"adv": 0.1}}}))
    rows = st.table_rows(tmp_path, [("lenet", "adversarial", "recipe", s, recipe)], (0.001, 0.1), (0, 1))
    # nothing attacked yet: every budget says so
    assert [(r["budget_label"], r["status"]) for r in rows] == [("0.1%", "not attacked yet"), ("10%", "not attacked yet")]
    assert rows[0]["objective"] == "adversarial + r1" and rows[0]["training"] == {"adv": 0.1}
    text = st.format_table(rows, (0, 1))
    assert "adversarial + r1" in text and "not attacked yet" in text
