"""Joint training: losses, the effect of training, determinism, checkpoints and resume, the tail."""
import math

import pytest
import torch

from mirrornet_tvm import data, frontend, zoo
from mirrornet_tvm.errors import ArtifactError, StrategyError, UsageError
from mirrornet_tvm.mirror import MirrorNet
from mirrornet_tvm.strategy import Strategy
from mirrornet_tvm.training import (JointConfig, TapAttacker, distillation, evaluate_mirrornet,
                                    normalized_entropy, tail_modules, train_joint, uniform_kl)
from mirrornet_tvm.training_base import fit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small():
    x, y, _, _ = data.load("fashion-mnist", subset=384)
    return x, y


@pytest.fixture(scope="module")
def trained_lenet(small):
    """A LeNet trained briefly on the subset: the 'original' the joint training starts from."""
    x, y = small
    torch.manual_seed(0)
    m = zoo.build("lenet")
    fit(m, x, y, epochs=8, lr=3e-3, batch_size=64, seed=0, progress=False)
    return frontend.load_model(m.eval(), (1, 28, 28)).proto


def _net(proto, strategy, seed=0):
    from mirrornet_tvm.graph import GraphNet

    torch.manual_seed(seed)
    return MirrorNet(GraphNet.from_onnx(proto), strategy)


def test_uniform_kl_is_zero_at_uniform_and_positive_elsewhere():
    assert abs(uniform_kl(torch.zeros(3, 10)).item()) < 1e-6
    assert abs(uniform_kl(torch.full((2, 10), 7.0)).item()) < 1e-6
    peaked = torch.tensor([[5.0] + [0.0] * 9])
    assert uniform_kl(peaked).item() > 0.1
    assert normalized_entropy(torch.zeros(1, 10)).item() == pytest.approx(1.0)
    t = torch.randn(4, 10)
    assert distillation(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation(t, -t, 4.0).item() > 0


def test_tap_attacker_gives_one_prediction_per_tap():
    att = TapAttacker({"a": (1, 4, 3, 3), "b": (1, 7)}, 10)
    out = att({"a": torch.rand(5, 4, 3, 3), "b": torch.rand(5, 7)})
    assert [o.shape for o in out] == [(5, 10), (5, 10)]


def _fixed_batch_losses(net, x, y):
    net.eval()
    with torch.no_grad():
        rect, bl, _ = net(torch.from_numpy(x[:256]))
    return (torch.nn.functional.cross_entropy(rect, torch.from_numpy(y[:256])).item(),
            normalized_entropy(bl).item())


@pytest.mark.parametrize("degradation, tail", [("uniform", "train"), ("adversarial", "reinit")])
def test_training_lowers_rectified_loss_and_degrades_the_backbone(trained_lenet, small, degradation, tail):
    x, y = small
    net = _net(trained_lenet, Strategy(("b1_maxpool",), 0.25, degradation=degradation))
    ce0, ent0 = _fixed_batch_losses(net, x, y)
    before = evaluate_mirrornet(net, x, y)
    res = train_joint(net, x, y, JointConfig(epochs=4, batch_size=64, tail=tail), progress=False)
    ce1, ent1 = _fixed_batch_losses(net, x, y)
    after = evaluate_mirrornet(net, x, y)
    assert ce1 < ce0 - 0.1                       # the CPM learned
    assert ent0 < 0.8                            # the trained backbone starts confident
    assert after["illegal"] < before["illegal"]
    if tail == "train":                          # the uniform term drove its own prediction to uniform
        assert ent1 > max(ent0 + 0.1, 0.9)       # (its argmax can stay right longer: see the figures)
        assert res.epochs[-1].degradation_kl < res.epochs[0].degradation_kl
    else:                                        # a random, frozen head: chance by construction
        assert after["illegal"] < 0.25
    for e in res.epochs:
        assert math.isfinite(e.loss)
        assert (e.degradation_kl is not None and e.degradation_kl >= 0) == (tail == "train")
        if degradation == "adversarial":
            assert e.attacker_kl is not None and 0 <= e.attacker_kl < math.log(10) + 10
        else:
            assert e.attacker_kl is None


def test_reinit_tail_freezes_layers_after_the_last_tap(trained_lenet, small):
    x, y = small
    net = _net(trained_lenet, Strategy(("b3_maxpool",), 0.5))
    keys = tail_modules(net)
    assert len(keys) == 3                         # the three Linear layers of LeNet's classifier
    before = {k: net.backbone.layers[k].weight.detach().clone() for k in keys}
    train_joint(net, x[:128], y[:128], JointConfig(epochs=1, batch_size=64, tail="reinit"), progress=False)
    for k in keys:
        w = net.backbone.layers[k].weight
        assert not w.requires_grad
        assert not torch.equal(w, before[k])
    assert torch.count_nonzero(net.backbone.layers[keys[-1]].weight) == 0       # the logits layer is zeroed
    assert torch.count_nonzero(net.backbone.layers[keys[0]].weight) > 0         # the others are random
    with torch.no_grad():
        _, bl, _ = net(torch.from_numpy(x[:8]))
    assert torch.allclose(bl, bl[:1].expand_as(bl))        # the backbone alone predicts the same for all
    assert torch.allclose(torch.softmax(bl, 1), torch.full_like(bl, 0.1))
    with pytest.raises(StrategyError, match="needs output 'logits'"):
        train_joint(_net(trained_lenet, Strategy(("b3_maxpool",), 0.5, output="correction")), x[:64], y[:64],
                    JointConfig(epochs=1, tail="reinit"), progress=False)


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_same_seed_same_result_and_resume_after_interruption(trained_lenet, small, tmp_path):
    x, y = small[0][:192], small[1][:192]
    s = Strategy(("b1_maxpool", "b3_maxpool"), 0.25, "concat", degradation="adversarial")
    cfg = JointConfig(epochs=2, batch_size=64, seed=3)

    full = _net(trained_lenet, s)
    r_full = train_joint(full, x, y, cfg, checkpoint=tmp_path / "full.pt", progress=False)

    class Interrupt(Exception):
        pass

    def stop(record):
        raise Interrupt

    ckpt = tmp_path / "part.pt"
    with pytest.raises(Interrupt):
        train_joint(_net(trained_lenet, s), x, y, cfg, checkpoint=ckpt, progress=False, on_epoch_end=stop)
    assert ckpt.is_file() and not list(tmp_path.glob(".part.pt.*"))   # written atomically
    resumed = _net(trained_lenet, s, seed=99)   # a differently seeded CPM: the checkpoint must win
    r_res = train_joint(resumed, x, y, cfg, checkpoint=ckpt, resume=True, progress=False)
    assert r_res.resumed_from == 1
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [e.loss for e in r_full.epochs] == [e.loss for e in r_res.epochs]

    # a checkpoint written under other options is refused
    with pytest.raises(ArtifactError, match="another configuration"):
        train_joint(_net(trained_lenet, s), x, y, JointConfig(epochs=2, batch_size=64, seed=4),
                    checkpoint=ckpt, resume=True, progress=False)


def test_bad_configs():
    with pytest.raises(UsageError, match="epochs"):
        JointConfig(epochs=-1)   # 0 is allowed: protect --epochs 0 builds the combined model untrained
    with pytest.raises(UsageError, match="tail"):
        JointConfig(tail="scramble")
    with pytest.raises(UsageError, match="lam"):
        JointConfig(lam=-1)


def test_frozen_backbone_trains_only_the_cpm(trained_lenet, small):
    x, y = small
    net = _net(trained_lenet, Strategy(("b1_maxpool", "b3_maxpool"), 0.25, "concat"))
    tail = set(tail_modules(net))
    shared = {k: v.clone() for k, v in net.backbone.state_dict().items() if k.split(".")[1] not in tail}
    assert len(shared) >= 4
    ce0, _ = _fixed_batch_losses(net, x, y)
    res = train_joint(net, x, y, JointConfig(epochs=3, batch_size=64), progress=False)   # frozen by default
    ce1, _ = _fixed_batch_losses(net, x, y)
    assert ce1 < ce0 - 0.1
    for k, v in net.backbone.state_dict().items():
        if k in shared:
            assert torch.equal(v, shared[k]), k
    assert all(e.backbone_accuracy is None and e.degradation_kl is None for e in res.epochs)
    # the fast path (backbone run only to the last tap) computes the same taps as the full forward
    with torch.no_grad():
        xb = torch.from_numpy(x[:4])
        _, _, taps = net(xb)
        assert all(torch.equal(a, b) for a, b in zip(taps.values(), net.tap_forward(xb)))
    with pytest.raises(UsageError, match="lr_backbone must be positive"):
        train_joint(_net(trained_lenet, Strategy(("b1_maxpool",), 0.25, degradation="adversarial")), x, y,
                    JointConfig(epochs=1, lr_backbone=0), progress=False)
    with pytest.raises(UsageError, match="tail 'reinit'"):
        train_joint(_net(trained_lenet, Strategy(("b1_maxpool",), 0.25)), x, y,
                    JointConfig(epochs=1, lr_backbone=0, tail="train"), progress=False)


def test_distillation_uses_the_teacher(trained_lenet, small):
    from mirrornet_tvm.graph import GraphNet

    x, y = small
    with pytest.raises(UsageError, match="teacher"):
        train_joint(_net(trained_lenet, Strategy(("b1_maxpool",), 0.25)), x, y, JointConfig(epochs=1, distill=1.0),
                    progress=False)
    a = _net(trained_lenet, Strategy(("b1_maxpool",), 0.25))
    b = _net(trained_lenet, Strategy(("b1_maxpool",), 0.25))
    cfg = JointConfig(epochs=1, batch_size=64, lr_backbone=0, distill=1.0)
    ra = train_joint(a, x, y, cfg, teacher=GraphNet.from_onnx(trained_lenet), progress=False)
    rb = train_joint(b, x, y, JointConfig(epochs=1, batch_size=64, lr_backbone=0), progress=False)
    assert ra.epochs[0].loss > rb.epochs[0].loss     # the distillation term is in the loss
    assert ra.epochs[0].rectified_ce != rb.epochs[0].rectified_ce
