"""The fewshot degradation objective: its simulated thief, its pool, and its hook into joint training."""
import copy

import numpy as np
import pytest
import torch

from mirrornet_tvm import data, zoo
from mirrornet_tvm.degradation import FewShotConfig, FewShotThief, make_objective, stratified_pool, uniform_kl
from mirrornet_tvm.errors import UsageError
from mirrornet_tvm.frontend import load_model
from mirrornet_tvm.mirror import MirrorNet
from mirrornet_tvm.strategy import Strategy
from mirrornet_tvm.training import JointConfig, train_joint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lenet_graph():
    torch.manual_seed(0)
    return load_model(zoo.build("lenet").eval(), input_shape=(1, 1, 28, 28)).graph()


@pytest.fixture(scope="module")
def small_data():
    x, y, _, _ = data.load("fashion-mnist", subset=400)
    return torch.from_numpy(x), torch.from_numpy(y)


def _net(graph, degradation="fewshot", tap="b1_maxpool"):
    return MirrorNet(copy.deepcopy(graph), Strategy((tap,), 0.25, "add", "logits", degradation))


def test_pool_is_stratified_deterministic_and_distinct():
    y = np.repeat(np.arange(10), 50)
    a = stratified_pool(y, 60, seed=3)
    assert len(a) == 60 and len(set(a.tolist())) == 60
    assert np.bincount(y[a.numpy()], minlength=10).tolist() == [6] * 10
    assert torch.equal(a, stratified_pool(y, 60, seed=3))
    assert not torch.equal(a, stratified_pool(y, 60, seed=4))
    assert len(stratified_pool(y, 10_000, seed=0)) == len(y)     # never more than there is


def test_config_rejects_bad_values():
    for bad in (dict(pool=5), dict(head="conv"), dict(hidden=0), dict(reset_every=0), dict(lr=0.0),
                dict(lr=float("nan"))):
        with pytest.raises(UsageError):
            FewShotConfig(**bad)


def test_uniform_kl_is_zero_only_for_uniform():
    assert float(uniform_kl(torch.zeros(4, 10))) == pytest.approx(0.0, abs=1e-6)
    assert float(uniform_kl(torch.tensor([[5.0] + [0.0] * 9]))) > 0.5


def test_objective_only_for_fewshot_and_needs_a_trainable_backbone(lenet_graph, small_data):
    x, y = small_data
    for d in ("uniform", "adversarial"):
        assert make_objective(_net(lenet_graph, d).strategy, _net(lenet_graph, d), x, y, 0) is None
    net = _net(lenet_graph)
    with pytest.raises(UsageError, match="lr_backbone"):
        make_objective(net.strategy, net, x, y, 0, backbone_lr=0.0)
    assert isinstance(make_objective(net.strategy, net, x, y, 0), FewShotThief)


def test_thief_learns_from_its_pool_resets_and_pushes_only_the_backbone(lenet_graph, small_data):
    x, y = small_data
    net = _net(lenet_graph)
    thief = make_objective(net.strategy, net, x[64:], y[64:], seed=0,     # its pool: none of the batch below
                           config=FewShotConfig(pool=100, reset_every=40, lr=3e-3))
    assert len(thief.y_pool) == 100
    # the thief reads the backbone's taps of its own pool only
    taps = {net.strategy.taps[0]: net.tap_forward(x[:64])[0]}
    before = thief.penalty(net, taps, y[:64]).item()
    for _ in range(38):
        thief.penalty(net, {k: v.detach() for k, v in taps.items()}, y[:64])
    assert thief.resets == 1
    after = thief.penalty(net, taps, y[:64])
    assert after.item() > before + 0.05        # trained on its pool, its prediction left uniform
    assert thief.read_stats() > 0.3            # and it classifies unseen images well above chance
    assert thief.read_stats() is None          # stats reset after a read
    net.zero_grad(set_to_none=True)
    head_grads = [p.grad.clone() for p in thief.heads.parameters()]     # from the thief's own last step
    after.backward()
    conv = next(p for p in net.backbone.parameters() if p.requires_grad)
    assert conv.grad is not None and float(conv.grad.abs().sum()) > 0
    assert all(torch.equal(g, p.grad) for g, p in zip(head_grads, thief.heads.parameters()))   # heads untouched
    thief.penalty(net, {k: v.detach() for k, v in taps.items()})
    thief.penalty(net, {k: v.detach() for k, v in taps.items()})
    assert thief.resets == 2                   # a fresh thief after reset_every steps


def test_joint_training_with_fewshot_moves_the_backbone(lenet_graph, small_data):
    x, y = small_data
    net = _net(lenet_graph)
    w0 = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    result = train_joint(net, x[:256], y[:256], JointConfig(epochs=1, adv=1.0, seed=0), progress=False)
    assert len(result.epochs) == 1 and np.isfinite(result.epochs[0].loss)
    moved = [k for k, v in net.backbone.state_dict().items() if "weight" in k and not torch.equal(v, w0[k])]
    assert moved, "the fewshot term must train the backbone"


def test_auto_strategy_with_the_fewshot_objective(lenet_graph):
    """`protect --auto --degradation fewshot` has candidates although generate_strategies does not
    enumerate fewshot by default; the other objectives' picks are unchanged."""
    from mirrornet_tvm.mirror import strip_softmax
    from mirrornet_tvm.protect import choose_strategy

    graph = strip_softmax(lenet_graph)
    few = choose_strategy(graph, auto=True, degradation="fewshot").strategy
    uni = choose_strategy(graph, auto=True, degradation="uniform").strategy
    assert few.degradation == "fewshot" and uni.degradation == "uniform"
    assert few.replace(degradation="uniform") == uni
