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
    names = [(r["model"], r["name"]) for r in st.RECIPES]   # a name may recur on another model (same recipe)
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


# --- reuse of base models and artifacts made elsewhere ----------------------------------------------------


def _fake_base(st, folder, model="vgg", **changes):
    """A stand-in base model (bytes, never loaded) with the sidecar `mirrornet train-base` writes."""
    from mirrornet_tvm.training_base import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR
    from mirrornet_tvm.util import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    onnx = folder / f"{model}.onnx"
    onnx.write_bytes(b"base model bytes of " + model.encode())
    side = {"model": model, "dataset": st.DATASET, "epochs": DEFAULT_EPOCHS[model], "subset": None, "seed": 0,
            "lr": DEFAULT_LR, "batch_size": DEFAULT_BATCH_SIZE, "onnx_sha256": sha256_file(onnx)}
    side.update(changes)
    Path(f"{onnx}.json").write_text(json.dumps(side))
    return onnx


def _fake_artifact(folder, base, strategy, config, subset=None, original=None):
    """An artifact folder as `mirrornet protect` leaves it, with the fields the reuse check reads."""
    import dataclasses

    folder.mkdir(parents=True)
    (folder / "original.onnx").write_bytes(base.read_bytes() if original is None else original)
    for name in ("backbone.onnx", "combined.onnx", "checkpoint.pt"):
        (folder / name).write_bytes(name.encode())
    strategy.save(folder / "strategy.json")
    from mirrornet_tvm.util import sha256_file

    (folder / "metrics.json").write_text(json.dumps({
        "model": {"sha256": sha256_file(base)}, "dataset": {"name": "fashion-mnist", "subset": subset},
        "strategy": strategy.to_dict(), "training": {"config": dataclasses.asdict(config), "epochs": config.epochs},
        "accuracy": {"original": 0.92, "authorized": 0.92, "illegal": 0.1}}))
    return folder


def test_base_model_is_reused_only_with_matching_settings(st, tmp_path, capsys):
    good = _fake_base(st, tmp_path / "good")
    assert st.base_mismatches(good, "vgg") == []
    dest = tmp_path / "out" / "models" / "vgg.onnx"
    assert st.reuse_base_model(tmp_path / "good", "vgg", dest)
    assert dest.read_bytes() == good.read_bytes() and Path(f"{dest}.json").is_file()

    short = _fake_base(st, tmp_path / "short", epochs=1)
    want_epochs = json.loads(Path(f"{good}.json").read_text())["epochs"]
    assert st.base_mismatches(short, "vgg") == [f"epochs: 1, want {want_epochs}"]
    dest2 = tmp_path / "out2" / "models" / "vgg.onnx"
    assert not st.reuse_base_model(tmp_path / "short", "vgg", dest2) and not dest2.exists()
    assert "not reusing base model" in capsys.readouterr().err

    edited = _fake_base(st, tmp_path / "edited")
    edited.write_bytes(b"changed after training")
    assert any("sha256" in w for w in st.base_mismatches(edited, "vgg"))
    assert st.base_mismatches(tmp_path / "nowhere" / "vgg.onnx", "vgg") == ["vgg.onnx missing"]
    assert st.base_mismatches(good, "resnet")[0].startswith("model: 'vgg'")


def test_artifact_is_reused_only_when_strategy_config_data_and_base_match(st, tmp_path, capsys):
    from mirrornet_tvm.training import JointConfig

    base = _fake_base(st, tmp_path / "base")
    s = Strategy(("b2_maxpool",), 0.25, "add", "logits", "uniform")
    zoo = tmp_path / "zoo"
    # same strategy trained with other settings (sorted first), another strategy, an unfinished one, the match
    _fake_artifact(zoo / "a-old", base, s, JointConfig(seed=0, epochs=8, lr_cpm=2e-3))
    _fake_artifact(zoo / "b-other", base, s.replace(width_ratio=0.5), JointConfig(seed=0))
    _fake_artifact(zoo / "c-unfinished", base, s, JointConfig(seed=0))
    (zoo / "c-unfinished" / "metrics.json").unlink()
    _fake_artifact(zoo / "d-match", base, s, JointConfig(seed=0))

    why = st.artifact_mismatches(zoo / "a-old", base, s, JointConfig(seed=0), None)
    assert "training.config.epochs: 8, want 16" in why and "training.config.lr_cpm: 0.002, want 0.005" in why
    assert st.artifact_mismatches(zoo / "d-match", base, s, JointConfig(seed=0), None) == []
    assert st.artifact_mismatches(zoo / "d-match", base, s, JointConfig(seed=0), 3000) == [
        "dataset.subset: None, want 3000"]
    assert st.artifact_mismatches(zoo / "d-match", base, s.replace(width_ratio=0.5), JointConfig(seed=0), None)

    art = tmp_path / "out" / "artifacts" / "vgg" / s.name
    assert st.reuse_artifact(zoo, art, base, s, JointConfig(seed=0), None)
    err = capsys.readouterr().err
    assert "a-old" in err and "training.config.epochs" in err and "c-unfinished" in err and "d-match" in err
    assert "b-other" not in err                 # another strategy is not a candidate, so no noise about it
    assert (art / "metrics.json").read_text() == (zoo / "d-match" / "metrics.json").read_text()
    assert json.loads((art / "reused_from.json").read_text())["source"] == str(zoo / "d-match")

    # a different base model (other bytes): nothing matches, nothing is copied
    other = _fake_base(st, tmp_path / "other", model="resnet")
    art2 = tmp_path / "out" / "artifacts" / "resnet" / s.name
    assert not st.reuse_artifact(zoo, art2, other, s, JointConfig(seed=0), None)
    assert not (art2 / "metrics.json").exists()
    assert "model.sha256" in capsys.readouterr().err
    # an artifact whose original.onnx is not the base model it records
    _fake_artifact(zoo / "e-swapped", base, s, JointConfig(seed=0, epochs=4), original=b"another model")
    assert st.artifact_mismatches(zoo / "e-swapped", base, s, JointConfig(seed=0, epochs=4), None) == [
        "original.onnx is not the base model"]
    assert not st.reuse_artifact(tmp_path / "missing", art2, base, s, JointConfig(seed=0), None)


def test_artifact_step_takes_a_reusable_artifact_without_training(st, tmp_path, monkeypatch):
    import types

    import mirrornet_tvm.protect as protect_mod
    from mirrornet_tvm.training import JointConfig

    def no_training(*a, **k):
        raise AssertionError("protect must not run when a matching artifact can be reused")

    monkeypatch.setattr(protect_mod, "protect", no_training)
    base = _fake_base(st, tmp_path / "base")
    s = Strategy(("b2_maxpool",), 0.25, "add", "logits", "uniform")
    _fake_artifact(tmp_path / "zoo" / "auto", base, s, JointConfig(seed=0))
    args = types.SimpleNamespace(protect_epochs=None, protect_subset=None, reuse_artifacts=tmp_path / "zoo")
    art = st.artifact(tmp_path / "out", "vgg", base, s, args)
    assert art == st.art_dir(tmp_path / "out", "vgg", s) and (art / "metrics.json").is_file()
    # with --protect-epochs 8 the artifact no longer matches: protect would run
    args.protect_epochs = 8
    with pytest.raises(AssertionError, match="must not run"):
        st.artifact(tmp_path / "out2", "vgg", base, s, args)


def test_only_default_plans_just_the_auto_pick(st, tmp_path, monkeypatch):
    s_uni = Strategy(("b2_maxpool",), 0.25, "add", "logits", "uniform")
    monkeypatch.setattr(st, "RECIPES", ())
    monkeypatch.setattr(st, "_graph", lambda base: "graph")
    monkeypatch.setattr(st, "auto_default", lambda graph, d: s_uni.replace(degradation=d))
    monkeypatch.setattr(st, "sweep", lambda graph, d, sweeps: [("default (--auto)", s_uni.replace(degradation=d)),
                                                               ("tap sweep", s_uni.replace(width_ratio=0.5,
                                                                                          degradation=d))])
    seen = []
    monkeypatch.setattr(st, "base_model", lambda out, model, reuse=None: seen.append((model, reuse)) or out)
    # an artifact of another strategy left in OUT by an earlier run is not planned for a --only-default model
    earlier = s_uni.replace(width_ratio=0.125)
    st.art_dir(tmp_path, "vgg", earlier).mkdir(parents=True)
    earlier.save(st.art_dir(tmp_path, "vgg", earlier) / "strategy.json")
    plan = st.load_plan(tmp_path, ("vgg",), st.DEGRADATIONS, ("taps",), False, ("vgg",), tmp_path / "bases")
    assert [(m, d, v, s.name) for m, d, v, s, r in plan] == [("vgg", "uniform", "default (--auto)", s_uni.name)]
    assert seen == [("vgg", tmp_path / "bases")]
    # without --only-default the same model gets both objectives and the sweep (and the earlier artifact)
    plan = st.load_plan(tmp_path, ("vgg",), st.DEGRADATIONS, ("taps",), False)
    assert len(plan) == 5 and {d for _, d, *_ in plan} == {"uniform", "adversarial"}
    # a sweep kept in OUT/plan.json from a run with other --variants is left out
    assert len(st.load_plan(tmp_path, ("vgg",), st.DEGRADATIONS, (), False)) == 3
    # and with it again, the plan kept in OUT/plan.json does not bring those back
    plan = st.load_plan(tmp_path, ("vgg",), st.DEGRADATIONS, ("taps",), False, ("vgg",))
    assert [s.name for _, _, _, s, _ in plan] == [s_uni.name]
    # a recipe listed for the model is planned beside its default (and one for another model is not)
    recipe = {"model": "vgg", "name": "adv0.1", "label": "adv 0.1", "taps": ["b2_maxpool"], "width": 0.25,
              "degradation": "adversarial", "config": {"adv": 0.1}}
    monkeypatch.setattr(st, "RECIPES", (recipe, dict(recipe, model="resnet", name="other")))
    plan = st.load_plan(tmp_path, ("vgg",), st.DEGRADATIONS, ("taps",), False, ("vgg",))
    assert [(v, s.name, r and r["name"]) for _, _, v, s, r in plan] == [
        ("default (--auto)", s_uni.name, None), ("recipe", s_uni.replace(degradation="adversarial").name, "adv0.1")]


def test_only_default_must_name_planned_models(st, tmp_path):
    with pytest.raises(SystemExit):
        st.main(["--models", "lenet", "--only-default", "vgg", "--table-only", "--out", str(tmp_path)])


def test_a_recipe_is_also_attacked_and_shown_at_its_extra_budgets(st, tmp_path, monkeypatch):
    assert st.budgets_of(None, (0.01, 0.001)) == (0.001, 0.01)
    assert st.budgets_of({"extra_budgets": [0.1, 0.01]}, (0.001, 0.01)) == (0.001, 0.01, 0.1)
    s = Strategy(("b1_maxpool",), 0.25, "add", "logits", "adversarial")
    recipe = {"model": "lenet", "name": "r1", "label": "+ r1", "taps": ["b1_maxpool"], "width": 0.25,
              "degradation": "adversarial", "config": {"adv": 0.1}, "extra_budgets": (0.1,)}
    plan = []
    for r in (None, recipe):
        art = st.art_dir(tmp_path, "lenet", s, r)
        art.mkdir(parents=True)
        (art / "metrics.json").write_text(json.dumps({
            "cpm": {"flop_share": 0.05}, "secure_memory": {"total": 50000},
            "accuracy": {"original": 0.91, "authorized": 0.9, "illegal": 0.1}}))
        plan.append(("lenet", "adversarial", "recipe" if r else "default (--auto)", s, r))
    rows = st.table_rows(tmp_path, plan, (0.001,), (0,))
    assert [(r["variant"], r["budget_label"]) for r in rows] == [
        ("default (--auto)", "0.1%"), ("recipe", "0.1%"), ("recipe", "10%")]
    # a plan kept in OUT from before the recipe had extra budgets takes them from RECIPES
    monkeypatch.setattr(st, "RECIPES", (recipe,))
    monkeypatch.setattr(st, "_graph", lambda base: "graph")
    monkeypatch.setattr(st, "base_model", lambda out, model, reuse=None: out)
    stale = {k: v for k, v in recipe.items() if k != "extra_budgets"}
    (tmp_path / "plan.json").write_text(json.dumps({"entries": [
        {"model": "lenet", "degradation": "adversarial", "variant": "recipe", "strategy": s.to_dict(),
         "recipe": stale}]}))
    monkeypatch.setattr(st, "auto_default", lambda graph, d: s.replace(degradation=d))
    plan = st.load_plan(tmp_path, ("lenet",), st.DEGRADATIONS, (), False, ("lenet",))
    assert [list(r["extra_budgets"]) for *_, r in plan if r] == [[0.1]]


def test_only_protects_current_defaults_count_as_the_default(st, tmp_path):
    from mirrornet_tvm.training import OBJECTIVE_DEFAULTS

    s = Strategy(("b3_add",), 0.25, "add", "logits", "adversarial")
    defaults = {("resnet", s.name)}
    adv = dict(OBJECTIVE_DEFAULTS["adversarial"])
    same = {"name": "r", "config": adv}
    other = {"name": "r2", "config": dict(adv, epochs=adv["epochs"] + 1)}
    assert st.variant_label(tmp_path, "resnet", "adversarial", "recipe", s, same, defaults) == "default (--auto)"
    assert st.variant_label(tmp_path, "resnet", "adversarial", "recipe", s, other, defaults) == "recipe"
    assert st.variant_label(tmp_path, "resnet", "adversarial", "recipe", s, same, set()) == "recipe"
    # --protect-epochs trains recipes and defaults alike for that long: a recipe differing only in epochs is then
    # the default
    assert st.variant_label(tmp_path, "resnet", "adversarial", "recipe", s, other, defaults, 3) == "default (--auto)"
    # a plain entry of the pick: default until its artifact records other settings
    assert st.variant_label(tmp_path, "resnet", "adversarial", "default (--auto)", s, None, defaults) == \
        "default (--auto)"
    art = st.art_dir(tmp_path, "resnet", s)
    art.mkdir(parents=True)
    (art / "metrics.json").write_text(json.dumps({"training": {"config": st.default_config("adversarial")}}))
    assert st.variant_label(tmp_path, "resnet", "adversarial", "default (--auto)", s, None, defaults) == \
        "default (--auto)"
    (art / "metrics.json").write_text(json.dumps({"training": {"config": st.default_config("uniform")}}))
    assert st.variant_label(tmp_path, "resnet", "adversarial", "default (--auto)", s, None, defaults) == \
        "--auto pick, earlier training defaults"
    assert st.variant_label(tmp_path, "resnet", "adversarial", "default (--auto)", s, None, set()) == \
        "earlier --auto pick"
