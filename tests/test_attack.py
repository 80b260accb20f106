"""Security evaluation: `mirrornet attack` on a tiny artifact, the arithmetic of the verdict, the thief's data."""
import json
import shutil

import numpy as np
import pytest
import torch

from mirrornet_tvm import data, zoo
from mirrornet_tvm.attack import (BLACKBOX, ILLEGAL, STEALING, WHITEBOX, AttackConfig, AttackRun, SecurityFloor,
                                  SecurityReport, Victim, budget_samples, disjoint_pool, evaluate, first_secure,
                                  format_table, gap_closed, random_like, summary_lines,
                                  thief_split)
from mirrornet_tvm.attack.attacks import make_probe, train
from mirrornet_tvm.cli import main
from mirrornet_tvm.errors import StrategyError, UsageError
from mirrornet_tvm.protect import protect
from mirrornet_tvm.strategy import Strategy
from mirrornet_tvm.training import JointConfig
from mirrornet_tvm.training_base import export_onnx, fit

torch.set_num_threads(1)

# A small but complete protocol: two budgets (a fraction and a count), two seeds, two learning rates.
TINY = dict(budgets=(0.0005, 40), seeds=(0, 1), lrs=(1e-3, 3e-3), epochs=2, test_subset=300)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    x, y, _, _ = data.load("fashion-mnist", subset=300)
    torch.manual_seed(0)
    m = zoo.build("lenet")
    fit(m, x, y, epochs=6, lr=3e-3, batch_size=64, seed=0, progress=False)
    root = tmp_path_factory.mktemp("attack")
    model = export_onnx(m, root / "lenet.onnx")
    s = Strategy(("b1_maxpool", "b3_maxpool"), 0.25, "add", "logits", "uniform")
    out = root / "art"
    protect(model, "fashion-mnist", out, strategy=s, config=JointConfig(epochs=1, seed=0), subset=200,
            progress=False)
    return out


def _run(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _tiny_args(**over):
    t = dict(TINY, **over)
    return ["--budgets", ",".join(map(str, t["budgets"])), "--seeds", ",".join(map(str, t["seeds"])),
            "--lrs", ",".join(map(str, t["lrs"])), "--epochs", str(t["epochs"]), "--test-subset", str(t["test_subset"])]


# --------------------------------------------------------------------------------------------------
# The command on a real (tiny) artifact
# --------------------------------------------------------------------------------------------------

def test_attack_cli_writes_every_field(artifact, tmp_path, capsys):
    out_json = tmp_path / "report.json"
    code, stdout, err = _run(["attack", str(artifact), "--dataset", "fashion-mnist", "-q", "--json", str(out_json),
                              "--controls"] + _tiny_args(), capsys)
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert json.loads((artifact / "attack.json").read_text()) == doc
    assert doc["generated_by"].startswith("mirrornet attack")
    assert doc["command"].startswith("mirrornet attack") and "--budgets 0.0005,40" in doc["command"]
    assert doc["strategy"]["taps"] == ["b1_maxpool", "b3_maxpool"]
    assert doc["dataset"]["test_images"] == 300 and doc["dataset"]["excluded_test_duplicates"] == 0
    p = doc["protocol"]
    assert p["lrs"] == [1e-3, 3e-3] and p["seeds"] == [0, 1] and p["epochs_per_budget"] == {"0.05%": 2, "40": 2}
    assert "held-out" in p["lr_selection"] and "never the test" in p["lr_selection"]
    controls = {f"control:{kind}:{tap}" for kind in ("random", "original") for tap in ("b1_maxpool", "b3_maxpool")}
    controls.add("control:pixels")
    attacks = {STEALING, "probe:b1_maxpool", "probe:b3_maxpool", BLACKBOX, WHITEBOX} | controls
    assert {r["attack"] for r in doc["runs"]} == attacks
    assert len(doc["runs"]) == 2 * 2 * len(attacks)                       # budgets x seeds x attacks
    assert {r["samples"] for r in doc["runs"]} == {30, 40}                # 0.05% of 60000, and a count
    for r in doc["runs"]:
        assert 0 <= r["accuracy"] <= 1 and r["lr"] in (1e-3, 3e-3) and set(r["val_accuracy"]) == {"0.001", "0.003"}
    ts = doc["thief_samples"]["0.05%"]
    assert ts["0"]["samples"] == 30 and ts["0"]["fit"] + ts["0"]["held_out"] == 30
    assert ts["0"]["indices_sha256"] != ts["1"]["indices_sha256"]         # seeds draw different samples
    ref = doc["reference"]
    assert 0 <= ref["illegal"] <= 1 and 0 <= ref["original"] <= 1 and ref["authorized"] is not None
    rows = doc["summary"]
    assert len(rows) == 2 * (len(attacks) + 1)                            # + illegal use per budget
    for row in rows:
        if row["attack"] not in (BLACKBOX,):
            assert row["ratio"] is not None
        if row["attack"] in {BLACKBOX, WHITEBOX} | controls:
            assert row["secure"] is None                                   # baselines and controls are not judged
        else:
            assert row["secure"] == (row["ratio"] <= 1.05)
    v = doc["verdict"]
    assert set(v["per_budget"]) == {"0.05%", "40"} and v["secure"] == all(b["secure"] for b in v["per_budget"].values())
    # the table shows every attack, the ratio, the gap closed and the verdict
    for words in ("fine-tune stolen backbone", "linear probe on b3_maxpool", "black-box (random init)",
                  "white-box (original fine-tuned)", "illegal use", "x black-box", "gap closed", "verdict:",
                  "control: probe b1_maxpool, random net", "control: probe b3_maxpool, original",
                  "control: linear on raw pixels"):
        assert words in stdout
    # the report can be read back with the same figures
    again = SecurityReport.from_dict(doc)
    assert [r.to_dict() for r in again.summary()] == rows
    brief = summary_lines(doc)                                             # what `mirrornet report` can show
    assert len(brief) == 4 and "0.05% (30 samples)" in brief[1] and "black-box" in brief[1]
    assert brief[-1].strip() == f"verdict: {'SECURE' if v['secure'] else 'NOT SECURE'}"


def test_attack_is_deterministic_and_caches_baselines(artifact, tmp_path):
    victim = Victim.from_artifact(artifact)
    config = AttackConfig(budgets=(30,), seeds=(3,), lrs=(2e-3,), epochs=2, test_subset=200)
    a = evaluate(victim, "fashion-mnist", config, progress=False)
    cache = tmp_path / "cache"
    b = evaluate(victim, "fashion-mnist", config, progress=False, baseline_cache=cache)
    assert [r.to_dict() | {"seconds": 0} for r in a.runs] == [r.to_dict() | {"seconds": 0} for r in b.runs]
    assert len(list(cache.glob("*.json"))) == 2                          # black-box and white-box
    c = evaluate(victim, "fashion-mnist", config, progress=False, baseline_cache=cache)
    assert [r.to_dict() for r in c.runs if r.attack in (BLACKBOX, WHITEBOX)] == \
           [r.to_dict() for r in b.runs if r.attack in (BLACKBOX, WHITEBOX)]
    other = evaluate(victim, "fashion-mnist", AttackConfig(budgets=(30,), seeds=(4,), lrs=(2e-3,), epochs=2,
                                                           test_subset=200), progress=False)
    assert other.meta["thief_samples"]["30"]["4"]["indices_sha256"] != a.meta["thief_samples"]["30"]["3"]["indices_sha256"]


def test_baselines_use_no_stolen_weights(artifact):
    victim = Victim.from_artifact(artifact)
    fresh = random_like(victim.original, seed=0)
    stolen = dict(victim.backbone.named_parameters())
    original = dict(victim.original.named_parameters())
    for name, p in fresh.named_parameters():
        if p.numel() > 1 and p.std() > 0:        # batch-norm scales reset to ones are equal by construction
            assert not torch.equal(p, original[name]) and not torch.equal(p, stolen[name]), name
    assert all(p.requires_grad for p in fresh.parameters())
    # the same seed gives the same baseline, another seed another one
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), random_like(victim.original, 0).parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(fresh.parameters(), random_like(victim.original, 1).parameters()))


def test_probe_trains_only_its_head(artifact):
    victim = Victim.from_artifact(artifact)
    probe = make_probe(victim.backbone, victim.taps["b1_maxpool"], 10, seed=0)
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    head = probe.head.weight.detach().clone()
    x, y, _, _ = data.load("fashion-mnist", subset=64)
    assert train(probe, x, y, epochs=2, lr=1e-2, batch_size=32, seed=0)
    after = probe.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)     # weights and batch-norm statistics
    assert not torch.equal(head, probe.head.weight)


def test_a_failed_retrain_leaves_the_thief_its_validated_model(monkeypatch):
    from mirrornet_tvm.attack import attacks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)                  # separable: any sane training fits it
    fit_xy, val_xy, all_xy = (x[:80], y[:80]), (x[80:], y[80:]), (x, y)
    spec = attacks.TrainSpec(lrs=(1e-2, 3e-2), epochs=20, batch_size=16, seed=0)
    start = torch.nn.Linear(4, 2)
    ok = attacks.train_with_lr_search(start, fit_xy, val_xy, all_xy, spec)
    assert ok.retrained and max(ok.val_accuracy.values()) >= 0.9

    real_train = attacks.train

    def collapsing(model, xs, ys, *a, **k):             # the retrain on the whole budget ends on one class
        done = real_train(model, xs, ys, *a, **k)
        if len(xs) == len(x):
            with torch.no_grad():
                model.weight.zero_()
                model.bias.copy_(torch.tensor([5.0, 0.0]))
        return done

    monkeypatch.setattr(attacks, "train", collapsing)
    kept = attacks.train_with_lr_search(start, fit_xy, val_xy, all_xy, spec)
    assert not kept.retrained and kept.lr == ok.lr
    scores = attacks._val_scores(kept.model, *val_xy)[0]
    assert scores == kept.val_accuracy[kept.lr] >= 0.9   # the model it validated, not the collapsed one
    # a retrain that diverges is handled the same way; every rate diverging is an error naming the fix
    monkeypatch.setattr(attacks, "train",
                        lambda model, xs, *a, **k: len(xs) != len(x) and real_train(model, xs, *a, **k))
    assert not attacks.train_with_lr_search(start, fit_xy, val_xy, all_xy, spec).retrained
    monkeypatch.setattr(attacks, "train", lambda *a, **k: False)
    with pytest.raises(Exception, match="diverged at every learning rate.*smaller --lrs"):
        attacks.train_with_lr_search(start, fit_xy, val_xy, all_xy, spec)


# --------------------------------------------------------------------------------------------------
# The thief's data
# --------------------------------------------------------------------------------------------------

def test_thief_data_is_disjoint_from_test_and_stratified():
    rng = np.random.default_rng(0)
    x_test = rng.random((40, 1, 6, 6), dtype=np.float32)
    x_train = rng.random((500, 1, 6, 6), dtype=np.float32)
    planted = rng.choice(500, size=25, replace=False)
    x_train[planted] = x_test[rng.integers(0, 40, size=25)]                # test images in the training split
    y_train = np.arange(500) % 5
    pool = disjoint_pool(x_train, x_test)
    assert len(pool) == 475 and not set(planted) & set(pool.tolist())
    test_bytes = {xi.tobytes() for xi in x_test}
    for seed in range(4):
        s = thief_split(y_train, pool, 100, seed, val_fraction=0.2)
        assert s.samples == 100 and len(s.val) == 20 and not set(s.fit) & set(s.val)
        assert set(s.all.tolist()) <= set(pool.tolist())
        assert not any(x_train[i].tobytes() in test_bytes for i in s.all)
        assert np.bincount(y_train[s.all], minlength=5).tolist() == [20] * 5
        assert np.bincount(y_train[s.val], minlength=5).tolist() == [4] * 5
        again = thief_split(y_train, pool, 100, seed, val_fraction=0.2)
        assert np.array_equal(again.fit, s.fit) and np.array_equal(again.val, s.val)
    assert not np.array_equal(thief_split(y_train, pool, 100, 0).all, thief_split(y_train, pool, 100, 1).all)


def test_evaluation_excludes_test_images_planted_in_training_split(artifact, tmp_path):
    x_train, y_train, x_test, y_test = data.load("fashion-mnist", subset=400)
    x_test, y_test = x_test[:200], y_test[:200]
    x_train = x_train.copy()
    x_train[:30] = x_test[:30]
    path = tmp_path / "leaky.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    victim = Victim.from_artifact(artifact)
    report = evaluate(victim, str(path), AttackConfig(budgets=(20,), seeds=(0,), lrs=(1e-3,), epochs=1, probes=False),
                      progress=False)
    assert report.meta["dataset"]["excluded_test_duplicates"] == 30
    assert report.meta["dataset"]["thief_pool"] == 370


def test_budget_samples():
    assert budget_samples(0.001, 60000) == 60 and budget_samples(0.1, 60000) == 6000 and budget_samples(600, 60000) == 600
    for bad in (0, -0.1, 1.5, float("nan"), 0.00001):
        with pytest.raises(UsageError):
            budget_samples(bad, 60000)


# --------------------------------------------------------------------------------------------------
# The arithmetic of the verdict
# --------------------------------------------------------------------------------------------------

def _runs(table):
    """{(attack, budget): [acc per seed]} -> AttackRuns."""
    return tuple(AttackRun(a, b, int(b * 60000), s, acc) for (a, b), accs in table.items() for s, acc in enumerate(accs))


def test_gap_closed_arithmetic():
    assert gap_closed(0.80, 0.70, 0.90) == pytest.approx(0.5)
    assert gap_closed(0.70, 0.70, 0.90) == 0.0 and gap_closed(0.90, 0.70, 0.90) == pytest.approx(1.0)
    assert gap_closed(0.60, 0.70, 0.90) == pytest.approx(-0.5)
    assert gap_closed(0.95, 0.70, 0.90) == pytest.approx(1.25)
    assert gap_closed(0.80, 0.70, 0.703) is None                          # no measurable gap
    runs = _runs({(STEALING, 0.01): [0.72, 0.76], (BLACKBOX, 0.01): [0.70, 0.70], (WHITEBOX, 0.01): [0.90, 0.86],
                  ("probe:b0_relu", 0.01): [0.70, 0.72],
                  (STEALING, 0.1): [0.90, 0.90], (BLACKBOX, 0.1): [0.88, 0.88], (WHITEBOX, 0.1): [0.881, 0.883]})
    r = SecurityReport(runs, illegal=0.10)
    ft = r.row(STEALING, 0.01)
    assert ft.accuracy == pytest.approx(0.74) and ft.accuracy_std == pytest.approx(np.std([0.72, 0.76], ddof=1))
    assert ft.ratio == pytest.approx(0.74 / 0.70) and ft.secure is False
    assert ft.ratio_std == pytest.approx(np.std([0.72 / 0.7, 0.76 / 0.7], ddof=1))
    assert ft.gap_closed == pytest.approx((0.74 - 0.70) / (0.88 - 0.70))
    assert ft.gap_closed_std == pytest.approx(np.std([0.02 / 0.2, 0.06 / 0.16], ddof=1))
    probe = r.row("probe:b0_relu", 0.01)
    assert probe.ratio == pytest.approx(0.71 / 0.70) and probe.secure is True
    ill = r.row(ILLEGAL, 0.01)
    assert ill.ratio == pytest.approx(0.10 / 0.70) and ill.secure is True and ill.seeds == 2
    assert r.row(BLACKBOX, 0.01).secure is None and r.row(BLACKBOX, 0.01).ratio is None
    assert r.row(WHITEBOX, 0.01).ratio == pytest.approx(0.88 / 0.70) and r.row(WHITEBOX, 0.01).secure is None
    assert r.row(STEALING, 0.1).gap_closed is None                         # white-box only 0.2 points above
    assert r.worst(0.01).attack == STEALING and r.worst(0.1).ratio == pytest.approx(0.90 / 0.88)
    assert not r.meets(1.05) and not r.meets(1.05, budgets=(0.01,)) and r.meets(1.05, budgets=(0.1,))
    assert r.meets(1.06) and r.meets(1.06, budgets=(0.01,))
    fails = r.failures(1.05)
    assert len(fails) == 1 and "1%" in fails[0] and "fine-tune" not in fails[0] and "finetune" in fails[0]
    assert r.max_gap_closed(0.01) == pytest.approx(0.04 / 0.18)          # from the means, not 10% and 38%
    assert not r.meets(1.06, max_gap_closed=0.2)
    assert r.meets(1.06, max_gap_closed=0.23)
    assert "10%" in r.failures(budgets=(0.001, 0.01))[0]                  # a budget asked for but not run
    v = r.verdict()
    assert v["secure"] is False and v["per_budget"]["1%"]["worst_attack"] == STEALING
    text = format_table(r)
    assert "NOT secure at 1%" in text and "secure at 10%" in text and "NOT SECURE" in text


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------

def test_bad_artifacts_give_clear_errors(artifact, tmp_path, capsys):
    cases = []
    cases.append((tmp_path / "nothing", "not an artifact folder"))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(artifact / "original.onnx", partial / "original.onnx")
    cases.append((partial, "lacks backbone.onnx, strategy.json"))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(artifact, corrupt)
    (corrupt / "backbone.onnx").write_bytes(b"not a model")
    cases.append((corrupt, "backbone.onnx is not a readable ONNX model"))
    wrong_tap = tmp_path / "wrong_tap"
    shutil.copytree(artifact, wrong_tap)
    (wrong_tap / "strategy.json").write_text(json.dumps({"taps": ["b42_relu"], "width_ratio": 0.25}))
    cases.append((wrong_tap, "b42_relu are not taps of the backbone"))
    for folder, words in cases:
        code, _, err = _run(["attack", str(folder), "--dataset", "fashion-mnist", "-q"], capsys)
        assert code != 0 and words in err and "Traceback" not in err, (folder, err)
    rgb = tmp_path / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(rgb, x_train=rng.random((20, 3, 32, 32), dtype=np.float32), y_train=np.arange(20) % 10,
             x_test=rng.random((10, 3, 32, 32), dtype=np.float32), y_test=np.arange(10))
    code, _, err = _run(["attack", str(artifact), "--dataset", str(rgb), "-q"] + _tiny_args(), capsys)
    assert code != 0 and "1x28x28" in err and "3x32x32" in err and "Traceback" not in err
    for opt, value, words in (("--budgets", "0.001,x", "comma-separated numbers"), ("--lrs", "-1", "positive"),
                              ("--seeds", "0,0", "repeat"), ("--budgets", "1.5", "whole number"),
                              ("--floor", "0.9", "at least 1")):
        code, _, err = _run(["attack", str(artifact), "--dataset", "fashion-mnist", "-q", opt, value], capsys)
        assert code != 0 and words in err and "Traceback" not in err, (opt, err)


# --------------------------------------------------------------------------------------------------
# The floor for strategy search
# --------------------------------------------------------------------------------------------------

def test_first_secure_keeps_the_first_strategy_meeting_the_floor(artifact):
    protected = Victim.from_artifact(artifact)
    # "a": no protection at all (the backbone is the original); "b": a backbone that holds nothing learned
    unprotected = Victim.from_models(protected.original, protected.original, protected.strategy)
    hollow = Victim.from_models(random_like(protected.original, seed=5), protected.original, protected.strategy)
    victims = {"a": unprotected, "b": hollow}
    tried = []

    def protect_one(name):
        tried.append(name)
        return victims[name]

    cheap = dict(budgets=(30,), seeds=(0,), lrs=(1e-3,), epochs=1, test_subset=200)
    r_a = SecurityFloor(**cheap).check(unprotected, "fashion-mnist", progress=False).worst(30).ratio
    r_b = SecurityFloor(**cheap).check(hollow, "fashion-mnist", progress=False).worst(30).ratio
    assert r_a > 1.2 and r_a > r_b          # the unprotected model is plainly stealable, the hollow one less so
    floor = SecurityFloor(ratio=max(1.0, (r_a + r_b) / 2), **cheap)
    pick = first_secure(["a", "b"], protect_one, floor, "fashion-mnist", progress=False)
    assert pick.strategy == "b" and pick.result is hollow and tried == ["a", "b"]
    assert [name for name, _ in pick.tried] == ["a", "b"] and not floor.met_by(pick.tried[0][1])
    assert floor.met_by(pick.report) and pick.report.worst(30).ratio == pytest.approx(r_b)
    # a floor nothing meets: every candidate is tried and the error says why each failed
    tried.clear()
    with pytest.raises(StrategyError) as info:
        first_secure(["a", "a"], protect_one, SecurityFloor(ratio=1.0, max_gap_closed=-10.0, **cheap),
                     "fashion-mnist", progress=False)
    assert tried == ["a", "a"] and "none of the 2 strategies" in str(info.value) and "black-box" in str(info.value)
