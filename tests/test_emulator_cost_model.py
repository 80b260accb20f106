"""Cost model persistence and target binding, features, calibration fit, selection and Pareto logic."""
import json

import numpy as np
import pytest
import torch

from mirrornet_tvm.emulator import calibration as cal_mod
from mirrornet_tvm.emulator import corpus, features
from mirrornet_tvm.emulator.cost_model import CostModel, FlopsBaseline
from mirrornet_tvm.emulator.emulate import Estimate, Floors, feasible, pareto_front, rank, select, table
from mirrornet_tvm.emulator.targets import RPI3, resolve_target, target_key
from mirrornet_tvm.errors import ArtifactError, StrategyError, TargetMismatchError, UsageError

torch.set_num_threads(1)
HOST = {"kind": "llvm", "mcpu": "x86-64"}


@pytest.fixture(scope="module")
def kernels():
    return corpus.random_kernels(24, seed=7)


def synthetic_seconds(kernels):
    # a known law the model can learn: time grows with work, elementwise kernels are slower per FLOP
    return np.array([(k.flops + 1.0) * 1e-9 + k.arg_bytes * 2e-10 + 1e-7 for k in kernels])


def test_features_have_fixed_length_and_differ_between_kernels(kernels):
    x = features.kernel_features(kernels[:6], HOST)
    assert x.shape == (6, features.LENGTH)
    assert np.all(np.isfinite(x))
    assert len({tuple(np.round(r, 6)) for r in x}) == 6  # distinct kernels, distinct vectors


def test_save_load_round_trip_predicts_the_same(tmp_path, kernels):
    model = CostModel(HOST)
    model.fit(kernels, synthetic_seconds(kernels), "tvm")
    before = model.predict(kernels, HOST, "tvm")
    model.save(tmp_path / "cm.json")
    loaded = CostModel.load(tmp_path / "cm.json")
    assert loaded.target == model.target and loaded.flavours == ("tvm",)
    np.testing.assert_allclose(loaded.predict(kernels, HOST, "tvm"), before, rtol=1e-6)
    assert json.loads((tmp_path / "cm.json").read_text())["generated_by"].startswith("mirrornet_tvm")


def test_refuses_another_target(tmp_path, kernels):
    model = CostModel(HOST)
    model.fit(kernels, synthetic_seconds(kernels), "tvm")
    model.save(tmp_path / "cm.json")
    loaded = CostModel.load(tmp_path / "cm.json")
    with pytest.raises(TargetMismatchError, match="cannot predict"):
        loaded.predict(kernels, RPI3, "tvm")
    with pytest.raises(TargetMismatchError):
        loaded.predict(kernels, {"kind": "llvm", "mcpu": "skylake"}, "tvm")
    with pytest.raises(UsageError, match="no 'c-O2' regressor"):
        loaded.predict(kernels, HOST, "c-O2")


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        CostModel.load(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        CostModel.load(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a mirrornet-cost-model"):
        CostModel.load(tmp_path / "other.json")
    bad = {"format": "mirrornet-cost-model/1", "feature_version": -1, "target": HOST, "flavours": {}}
    (tmp_path / "old.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="feature layout"):
        CostModel.load(tmp_path / "old.json")


def test_fit_rejects_bad_training_data(kernels):
    model = CostModel(HOST)
    with pytest.raises(UsageError, match="at least 4"):
        model.fit(kernels[:2], [1e-3, 2e-3])
    with pytest.raises(UsageError, match="positive"):
        model.fit(kernels[:5], [1e-3, 0.0, 1e-3, 1e-3, 1e-3])
    with pytest.raises(UsageError, match="timings"):
        model.fit(kernels[:5], [1e-3] * 4)


def test_learns_a_law_flops_alone_misses(kernels):
    more = corpus.random_kernels(60, seed=11, exclude={k.key for k in kernels})
    train, held = kernels + more[:30], more[30:]
    # seconds depend on bytes as much as on FLOPs: FLOPs alone cannot rank these
    law = lambda ks: np.array([(k.flops + 1) * 1e-10 + k.arg_bytes * 5e-9 for k in ks])  # noqa: E731
    model = CostModel(HOST)
    model.fit(train, law(train), "tvm")
    from scipy.stats import spearmanr

    truth = law(held)
    ours = spearmanr(model.predict(held, HOST, "tvm"), truth)[0]
    flops = spearmanr(FlopsBaseline().fit(train, law(train)).predict(held), truth)[0]
    assert ours > 0.9 and ours > flops


def test_target_key_is_canonical():
    assert target_key(resolve_target("rpi3")) == target_key(dict(RPI3))
    assert target_key(HOST) != target_key(RPI3)
    with pytest.raises(UsageError, match="neither"):
        resolve_target("not-a-target")


def _samples(rng, n, backbone=(1e-3, 5e-3), noise=0.0):
    transfer = cal_mod.Transfer(per_invoke=30e-6, per_byte=1e-9)
    out = []
    for i in range(n):
        bp, bc, bb = rng.uniform(*backbone), int(rng.integers(3, 12)), int(rng.integers(1, 80)) * 1024
        cp, cc, tin = rng.uniform(1e-5, 5e-4), int(rng.integers(2, 10)), int(rng.integers(1, 900)) * 1024
        out.append(cal_mod.Sample(
            f"s{i}", bp, bc, bb, cp, cc, tin, 40,
            backbone_measured=(1.1 * bp + 2e-6 * bc + 1e-9 * bb + 20e-6) * (1 + noise * rng.standard_normal()),
            cpm_measured=1.5 * cp + 1e-6 * cc,
            transfer_measured=transfer(tin, 40)))
    return out


def _predict(cal, s):
    return (cal.backbone(s.backbone_predicted, s.backbone_calls, s.backbone_out_bytes)
            + cal.cpm(s.cpm_predicted, s.cpm_calls) + cal.transfer(s.tee_in_bytes, s.tee_out_bytes))


def test_calibration_fit_predicts_unseen_runs(tmp_path):
    rng = np.random.default_rng(0)
    cal = cal_mod.fit(_samples(rng, 8))
    assert cal.backbone.scale == pytest.approx(1.1, rel=0.05)
    assert cal.cpm.scale == pytest.approx(1.5, rel=0.1)
    assert cal.transfer.per_invoke == pytest.approx(30e-6, rel=1e-3)
    assert cal.transfer.per_byte == pytest.approx(1e-9, rel=1e-3)
    for s in _samples(rng, 20):
        truth = s.backbone_measured + s.cpm_measured + s.transfer_measured
        assert _predict(cal, s) == pytest.approx(truth, rel=0.03)
    cal.save(tmp_path / "cal.json")
    assert cal_mod.Calibration.load(tmp_path / "cal.json") == cal
    with pytest.raises(UsageError, match="at least 3"):
        cal_mod.fit(_samples(rng, 2))


def test_calibration_on_similar_runs_still_scales_to_small_ones():
    """Calibrating only on strategies that run (almost) the whole backbone must not turn the backbone
    into a constant: a strategy that runs a tenth of it is still predicted near a tenth."""
    rng = np.random.default_rng(1)
    cal = cal_mod.fit(_samples(rng, 6, backbone=(17.5e-3, 17.8e-3), noise=0.01))  # 1% timing noise
    small = _samples(rng, 5, backbone=(1.5e-3, 2e-3))
    for s in small:
        truth = s.backbone_measured + s.cpm_measured + s.transfer_measured
        assert _predict(cal, s) == pytest.approx(truth, rel=0.15)


def test_calibration_separates_the_vms_constant_from_the_kernels_scale():
    """Backbones of LeNet's sizes (kernel sums 10 to 90 us) behind a 17 us per-call constant: the fit
    recovers both, and a small backbone is predicted as closely as a large one."""
    rng = np.random.default_rng(2)

    def runs(preds):
        return [cal_mod.Sample(f"b{i}", p, 3, 4096, 1e-5, 2, 4096, 40, backbone_measured=1.3 * p + 17e-6,
                               cpm_measured=1.5e-5, transfer_measured=15e-6) for i, p in enumerate(preds)]

    cal = cal_mod.fit(runs([11e-6, 86e-6, 88e-6, 90e-6, 91e-6, 93e-6]))
    assert "scale + fixed" in cal.source
    assert cal.backbone.scale == pytest.approx(1.3, rel=1e-3) and cal.backbone.fixed == pytest.approx(17e-6, rel=1e-3)
    for s in runs(rng.uniform(8e-6, 100e-6, 10)):
        assert cal.backbone(s.backbone_predicted, s.backbone_calls, s.backbone_out_bytes) == \
            pytest.approx(s.backbone_measured, rel=1e-3)
    # backbones too alike to tell a constant from a scale: the scale-first form, and the source says so
    alike = cal_mod.fit(runs([86e-6, 88e-6, 90e-6, 91e-6]))
    assert "too alike" in alike.source


def test_invokes_split_large_taps():
    t = cal_mod.Transfer(shm_limit=1000)
    assert t.invokes(1000) == 1
    assert t.invokes(1001) == 3  # two LOAD_TAPS chunks, then RUN_CPM
    assert t.invokes(2500) == 4


def _est(name, total, secure, accuracy=None, security=None):
    return Estimate(name=name, strategy={}, backbone_s=total, cpm_s=0.0, transfer_s=0.0, total_s=total,
                    invokes=1, tee_bytes=0, secure_bytes=secure, secure={}, backbone_kernels=1, cpm_kernels=1,
                    tuned=False, accuracy=accuracy, security=security)


def test_select_rank_and_floors():
    es = [_est("fast-big", 1.0, 900, 0.90, 0.2), _est("mid", 2.0, 500, 0.92, 0.6),
          _est("slow-small", 3.0, 100, 0.91, 0.9)]
    assert select(es).name == "fast-big"
    assert select(es, budget_bytes=600).name == "mid"
    assert select(es, floors=Floors(min_security=0.8)).name == "slow-small"
    assert [e.name for e in rank(es, budget_bytes=600)] == ["mid", "slow-small"]
    assert feasible(es, floors=Floors(min_accuracy=0.915)) == [es[1]]
    with pytest.raises(StrategyError, match="none of 3"):
        select(es, budget_bytes=50)
    unknown = [_est("a", 1.0, 10)]
    with pytest.raises(StrategyError):
        select(unknown, floors=Floors(min_accuracy=0.5))  # an unknown accuracy does not pass a floor
    assert "fast-big" in table(es)


def test_pareto_front_drops_dominated():
    es = [_est("a", 1.0, 900), _est("b", 2.0, 500), _est("c", 3.0, 100), _est("d", 2.5, 600),
          _est("e", 1.0, 950)]
    assert [e.name for e in pareto_front(es)] == ["a", "b", "c"]
    with_security = [_est("a", 1.0, 900, security=0.1), _est("d", 2.5, 600, security=0.9),
                     _est("b", 2.0, 500, security=0.5)]
    # d is slower and bigger than b, but more secure: on the front once security counts
    assert {e.name for e in pareto_front(with_security)} == {"a", "b", "d"}


def test_report_json_and_pareto_plot(tmp_path):
    from mirrornet_tvm.emulator.report import plot_pareto, write_json_report

    es = [_est("a", 1e-3, 9000), _est("b", 2e-3, 5000), _est("c", 3e-3, 6000)]
    front = pareto_front(es)
    write_json_report(tmp_path / "s.json", es, selected=es[0], front=front, budget_bytes=10_000)
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["selected"] == "a" and data["pareto_front"] == ["a", "b"] and len(data["estimates"]) == 3
    plot_pareto(tmp_path / "front.png", es, front, selected=es[0])
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
