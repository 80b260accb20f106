"""bench/protect_zoo.py reuses an artifact only while it still describes what the command gives today."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mirrornet_tvm import zoo
from mirrornet_tvm.training import JointConfig
from mirrornet_tvm.training_base import export_onnx

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("protect_zoo", ROOT / "bench" / "protect_zoo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(zoo.build("lenet").eval(), tmp_path_factory.mktemp("base") / "lenet.onnx")


def _artifact(folder: Path, strategy: dict, config: dict, subset=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {"strategy": strategy, "training": {"config": config}, "dataset": {"subset": subset}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.mark.parametrize("config", ["auto-uniform", "deep-uniform"])
def test_stale_artifacts_are_recognised(bench, base, tmp_path, config):
    args = argparse.Namespace(seed=0, epochs=None, subset=None)
    strategy, cfg = bench.expected_run(base, config, args, tmp_path / "lenet-deep.json")
    assert cfg == json.loads(json.dumps(JointConfig().to_dict()))      # today's defaults
    assert strategy["degradation"] == "uniform"
    art = tmp_path / f"lenet-{config}"

    _artifact(art, strategy, cfg)
    assert bench.stale_reason(art, "lenet", base, config, args) is None

    _artifact(art, strategy, dict(cfg, lr_cpm=cfg["lr_cpm"] * 2))       # made with an older default
    assert "lr_cpm" in bench.stale_reason(art, "lenet", base, config, args)

    _artifact(art, dict(strategy, taps=["b0_relu"], name="other"), cfg)
    assert "strategy other" in bench.stale_reason(art, "lenet", base, config, args)

    _artifact(art, strategy, cfg, subset=300)
    assert "subset 300" in bench.stale_reason(art, "lenet", base, config, args)

    # an explicit --epochs is part of what the command gives
    ep = argparse.Namespace(seed=0, epochs=cfg["epochs"] + 1, subset=None)
    _artifact(art, strategy, cfg)
    assert "epochs" in bench.stale_reason(art, "lenet", base, config, ep)
