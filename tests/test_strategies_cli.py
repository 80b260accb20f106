"""`mirrornet strategies --tuning` and `mirrornet protect --auto --tuning`: the emulator chooses the strategy."""
import json
import shutil

import onnx
import pytest
import torch

from mirrornet_tvm import frontend, zoo
from mirrornet_tvm.cli import main
from mirrornet_tvm.emulator import calibration as cal_mod
from mirrornet_tvm.emulator.emulate import Emulator
from mirrornet_tvm.mirror import strip_softmax
from mirrornet_tvm.protect import AUTO_FLOP_SHARE, choose_strategy
from mirrornet_tvm.strategy import auto_select, generate_strategies

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """The zoo LeNet as ONNX and a tuning folder from the smallest `mirrornet tune` run."""
    folder = tmp_path_factory.mktemp("strategies")
    model = folder / "lenet.onnx"
    onnx.save(frontend.load_model(zoo.build("lenet")).proto, str(model))
    tuning = folder / "tuning"
    with pytest.raises(SystemExit) as info:
        main(["tune", str(model), "-o", str(tuning), "--corpus", "4", "--strategies", "1", "--repeat", "1",
              "--quiet"])
    assert info.value.code == 0
    assert (tuning / "cost_model.json").is_file() and not (tuning / "calibration.json").exists()
    return model, tuning


@pytest.fixture(scope="module")
def ranked(lenet, tmp_path_factory):
    """`mirrornet strategies --tuning` with JSON and plot written; (stdout, report, plot path)."""
    model, tuning = lenet
    out = tmp_path_factory.mktemp("ranked")
    with pytest.raises(SystemExit) as info:
        main(["strategies", str(model), "--tuning", str(tuning), "--json-out", str(out / "ranking.json"),
              "--plot", str(out / "front.png"), "--top", "5", "--quiet"])
    assert info.value.code == 0
    return out / "ranking.json", out / "front.png"


def _dominates(a, b):
    return (a["total_s"] <= b["total_s"] and a["secure_bytes"] <= b["secure_bytes"]
            and (a["total_s"] < b["total_s"] or a["secure_bytes"] < b["secure_bytes"]))


def test_ranking_json_selects_the_fastest_strategy_meeting_the_floors(lenet, ranked):
    model, tuning = lenet
    report = json.loads(ranked[0].read_text())
    assert report["generated_by"].startswith("mirrornet strategies") and report["model"] == str(model)
    assert report["emulator"]["cost_model"] == str(tuning / "cost_model.json")
    est = report["estimates"]
    graph = strip_softmax(frontend.load_model(str(model)).graph())
    costs = generate_strategies(graph, report["budget_bytes"])
    assert sorted(e["name"] for e in est) == sorted(c.strategy.name for c in costs) and len(est) > 100
    totals = [e["total_s"] for e in est]
    assert totals == sorted(totals) and all(t > 0 for t in totals)
    for e in est:
        assert e["total_s"] == pytest.approx(e["backbone_s"] + e["cpm_s"] + e["transfer_s"])
        assert e["secure_bytes"] <= report["budget_bytes"]
    # the floors: what the --auto rule accepts, strategy by strategy
    by_name = {e["name"]: e for e in est}
    eligible = set(report["eligible"])
    assert eligible and eligible < set(by_name)
    for name in eligible:
        s = by_name[name]["strategy"]
        assert len(s["taps"]) == 1 and s["output"] == "logits" and s["width_ratio"] >= 0.25
        assert s["degradation"] == "uniform" and by_name[name]["flop_share"] <= AUTO_FLOP_SHARE
    # ... past the input's full resolution whenever such a tap qualifies
    resolution = {c.strategy.name: c.tap_resolution for c in costs}
    assert all(resolution[n] < 1.0 for n in eligible) or all(resolution[n] == 1.0 for n in eligible)
    selected = by_name[report["selected"]]
    assert selected["total_s"] == min(by_name[n]["total_s"] for n in eligible)
    # never predicted slower than what the rule alone picks
    rule_pick = auto_select(costs, max_flop_share=AUTO_FLOP_SHARE).strategy.name
    assert rule_pick in eligible and selected["total_s"] <= by_name[rule_pick]["total_s"]
    # the Pareto front: nothing dominates a member; every other strategy is dominated by a member
    front = [by_name[n] for n in report["pareto_front"]]
    assert front
    assert not any(_dominates(e, f) for f in front for e in est)
    assert all(any(_dominates(f, e) or (f["total_s"], f["secure_bytes"]) == (e["total_s"], e["secure_bytes"])
                   for f in front) for e in est)
    # the JSON agrees with the emulator asked directly
    direct = Emulator.load(tuning).estimate(next(c for c in costs if c.strategy.name == selected["name"]),
                                            frontend.load_model(str(model)))
    assert direct.total_s == pytest.approx(selected["total_s"], rel=1e-6)


def test_plot_is_a_png(ranked):
    data = ranked[1].read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not list(ranked[1].parent.glob(".*.tmp"))  # written atomically: no leftovers


def test_ranked_table_marks_front_and_selection(lenet, ranked, capsys):
    model, tuning = lenet
    report = json.loads(ranked[0].read_text())
    code, out, err = _run(["strategies", str(model), "--tuning", str(tuning), "--top", "3", "--quiet"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert "total ms" in lines[0] and "CPM (TEE)" in lines[0] and "secure KiB" in lines[0] and "FLOPs" in lines[0]
    rows = {ln.split()[1]: ln for ln in lines[1:] if ln.strip() and ln.split()[0].isdigit()}
    for name in report["pareto_front"]:
        assert name in rows and rows[name].rstrip().split()[-1].replace("*", "").startswith("P")
    assert rows[report["selected"]].split()[-1].startswith("*")
    assert f"--auto --tuning would select {report['selected']}" in out
    assert "uncalibrated" in out and "Pareto front" in out and "more rows: --top 0 shows all" in out


def test_calibrated_tuning_adds_transfer(lenet, tmp_path, capsys):
    model, tuning = lenet
    calibrated = tmp_path / "calibrated"
    shutil.copytree(tuning, calibrated)
    cal_mod.Calibration(transfer=cal_mod.Transfer(per_invoke=50e-6, per_byte=1e-9),
                        source="written by the test").save(calibrated / "calibration.json")
    code, out, err = _run(["strategies", str(model), "--tuning", str(calibrated), "--json", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["emulator"]["calibration"] == "written by the test"
    assert all(e["transfer_s"] >= 50e-6 for e in report["estimates"])


def test_without_tuning_the_table_says_how_to_get_latencies(lenet, tmp_path, capsys):
    model, _ = lenet
    code, out, err = _run(["strategies", str(model)], capsys)
    assert code == 0, err
    assert "secure KiB" in out and "--auto would pick" in out and "total ms" not in out
    assert "mirrornet tune MODEL -o DIR" in out and "--tuning DIR" in out
    code, out, err = _run(["strategies", str(model), "--json-out", str(tmp_path / "s.json")], capsys)
    assert code == 0 and json.loads((tmp_path / "s.json").read_text())["auto"]["taps"]


@pytest.mark.parametrize("extra, words", [
    (["--plot", "{tmp}/p.png"], "--plot draws predicted latency: give --tuning DIR"),
    (["--tuning", "{tmp}/missing"], "does not exist; make it with `mirrornet tune"),
    (["--tuning", "{tmp}", "--plot", "{tmp}/p.svg"], "ending in .png"),
    (["--tuning", "{tmp}"], "has no cost_model.json"),
    (["--max-taps", "0"], "--max-taps must be at least 1"),
])
def test_strategies_bad_arguments(lenet, tmp_path, capsys, extra, words):
    model, _ = lenet
    code, _, err = _run(["strategies", str(model), "--quiet"] + [a.format(tmp=tmp_path) for a in extra], capsys)
    assert code != 0 and words in err and "Traceback" not in err


def test_choose_strategy_with_and_without_the_emulator(lenet):
    model, tuning = lenet
    loaded = frontend.load_model(str(model))
    graph = strip_softmax(loaded.graph())
    rule = choose_strategy(graph, auto=True)
    assert rule.emulation is None and "no performance emulator" in rule.how
    assert rule.strategy == auto_select(generate_strategies(graph), max_flop_share=AUTO_FLOP_SHARE).strategy
    emu = choose_strategy(graph, auto=True, tuning=tuning, model=loaded)
    assert emu.how.startswith("auto: chosen by the Performance Emulator") and str(tuning) in emu.how
    assert emu.emulation["predicted_ms"]["total"] > 0 and emu.emulation["eligible"] >= 1
    est = Emulator.load(tuning).estimate(emu.strategy, loaded)
    assert emu.emulation["predicted_ms"]["total"] == pytest.approx(est.total_s * 1e3, rel=1e-6)
    adversarial = choose_strategy(graph, auto=True, tuning=tuning, model=loaded, degradation="adversarial")
    assert adversarial.strategy == emu.strategy.replace(degradation="adversarial")


def test_protect_auto_tuning_records_the_emulator_choice(lenet, ranked, tmp_path, capsys):
    model, tuning = lenet
    out = tmp_path / "art"
    code, stdout, err = _run(["protect", str(model), "--dataset", "fashion-mnist", "--auto", "--tuning", str(tuning),
                              "--epochs", "1", "--subset", "200", "-q", "-o", str(out)], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["strategy_selection"].startswith("auto: chosen by the Performance Emulator")
    assert str(tuning / "cost_model.json") in m["strategy_selection"]
    em = m["strategy_emulation"]
    assert em["tuning"]["cost_model"] == str(tuning / "cost_model.json")
    assert em["predicted_ms"]["total"] == pytest.approx(sum(em["predicted_ms"][k]
                                                            for k in ("backbone", "cpm", "transfer")))
    assert "Performance Emulator" in stdout and "least predicted latency" in stdout
    # the strategy `mirrornet strategies --tuning` said --auto --tuning would select
    assert m["strategy"]["name"] == json.loads(ranked[0].read_text())["selected"]
    assert m["cpm"]["flop_share"] <= AUTO_FLOP_SHARE
    code, _, err = _run(["protect", str(model), "--dataset", "fashion-mnist", "--strategy", str(out / "strategy.json"),
                         "--tuning", str(tuning), "-q", "-o", str(tmp_path / "x")], capsys)
    assert code != 0 and "--tuning DIR is for --auto" in err and "Traceback" not in err


def test_emulator_choice_fails_clearly_when_nothing_meets_the_floors(lenet):
    from mirrornet_tvm.errors import StrategyError

    model, tuning = lenet
    loaded = frontend.load_model(str(model))
    graph = strip_softmax(loaded.graph())
    budget = 2 * 1024  # nothing fits
    assert not generate_strategies(graph, budget)
    with pytest.raises(StrategyError, match="meets the floors"):
        choose_strategy(graph, auto=True, budget_bytes=budget, tuning=tuning, model=loaded)
    # strategies that fit but none the rule accepts (every one adds a correction to the logits)
    from mirrornet_tvm.emulator.selection import load_tuning, rank_space, selection_note

    costs = [c for c in generate_strategies(graph, 8 * 1024) if c.strategy.output == "correction"]
    assert costs
    ranking = rank_space(loaded, costs, load_tuning(tuning), budget_bytes=8 * 1024, max_flop_share=0.05,
                         progress=False)
    with pytest.raises(StrategyError, match="meets the floors"):
        selection_note(ranking)
