"""Every method's ``paper`` recipe, end to end on the genuine VOC / COCO files in ../shared/data.

The registry drives the cases (timm's ``test_models.py`` style): a new method
is covered without editing this file. Each run takes one step on two images
(batch norm needs two; one where the recipe's batch is one) with no
pretrained weights (offline) and is evaluated on one genuine image (the
samples are cut to two training images and one evaluation image, so that 29
paper-scale runs fit the suite); the recipe is otherwise untouched: its
backbone, crop, schedule, post-processors and test-time settings, except
DeepLab v3 / v3+'s twelve-pass multi-scale and flipped evaluation, cut to
one pass here (``TTA_CUT``; ``SEGBENCH_PAPER_FULL=1`` runs it whole). The
VOC recipes that train on ``trainaug`` (SBD) train on ``train`` here: the
sample has no SBD.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from segbench.plugins import get_registry

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
VOC12_ROOT, VOC07, COCO = SHARED / "voc2012", SHARED / "voc2007" / "VOCdevkit" / "VOC2007", SHARED / "coco"
needs_shared = pytest.mark.skipif(not (VOC12_ROOT.is_dir() and VOC07.is_dir() and COCO.is_dir()),
                                  reason="no ../shared/data VOC / COCO sample")
SMOKE = {"steps": 1, "checkpoint_every": 0}
FULL = os.environ.get("SEGBENCH_PAPER_FULL") == "1"
TTA_CUT = {"deeplab_v3": {"eval_scales": [1.0], "eval_flip": False},
           "deeplab_v3plus": {"eval_scales": [1.0], "eval_flip": False}}
REGISTRY = get_registry()


def offline(spec) -> dict:
    """No pretrained weights (none can be downloaded here), for the methods that have the option."""
    return {"pretrained": False} if "pretrained" in spec.options else {}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name, spec in sorted(REGISTRY.methods.items()):
        if spec.supervision == "instance":
            cases.append((name, "coco"))
            continue
        cases.append((name, "voc2012"))
        if spec.supervision == "image":  # the classification papers' VOC 2007 protocol
            cases.append((name, "voc2007"))
    return cases


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """Two genuine training images and one evaluation image each: VOC 2012 (2007_000032, 2007_000063 /
    2007_000033), VOC 2007 (000002, 000003 / 000004), COCO (the smallest train2017 and val2017 images), linked,
    with lists written here."""
    base = tmp_path_factory.mktemp("paper_data")
    voc12 = base / "voc2012" / "VOCdevkit" / "VOC2012"
    (voc12 / "ImageSets" / "Segmentation").mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        (voc12 / sub).symlink_to(VOC12_ROOT / "VOCdevkit" / "VOC2012" / sub, target_is_directory=True)
    for split, ids in (("train", "2007_000032\n2007_000063"), ("val", "2007_000033"), ("trainval", "2007_000032")):
        (voc12 / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(ids + "\n")
    voc07 = base / "voc2007" / "VOCdevkit" / "VOC2007"
    (voc07 / "ImageSets" / "Main").mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations"):
        (voc07 / sub).symlink_to(VOC07 / sub, target_is_directory=True)
    (voc07 / "ImageSets" / "Main" / "trainval.txt").write_text("000002\n000003\n")
    (voc07 / "ImageSets" / "Main" / "test.txt").write_text("000004\n")
    coco = base / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split, keep in (("train", 2), ("val", 1)):
        (coco / f"{split}2017").symlink_to(COCO / f"{split}2017", target_is_directory=True)
        data = json.loads((COCO / "annotations" / f"instances_{split}2017.json").read_text())
        annotated = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd")}
        images = sorted((i for i in data["images"] if i["id"] in annotated), key=lambda i: i["height"] * i["width"])
        data["images"] = images[:keep]
        kept = {i["id"] for i in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
        (coco / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return {"voc2012": base / "voc2012", "voc2007": base / "voc2007", "coco": coco}


@needs_shared
@pytest.mark.parametrize("method, dataset", _cases())
def test_every_paper_recipe_runs_end_to_end_on_genuine_files(method, dataset, roots, tmp_path):
    from segbench.engine.run import run_experiment

    spec = REGISTRY.method(method)
    recipe = spec.recipes["paper"]
    overrides = {**SMOKE, "batch_size": min(2, recipe.train.get("batch_size", 2)), **offline(spec),
                 **({} if FULL else TTA_CUT.get(method, {}))}
    if recipe.train.get("train_split") == "trainaug" and dataset == "voc2012":
        overrides["train_split"] = "train"
    said: list[str] = []
    outcome = run_experiment(method, dataset, overrides=overrides, root=str(roots[dataset]), runs=tmp_path,
                             progress=False, echo=said.append)
    record = outcome.record
    assert record["status"] == "finished" and record["recipe"] == "paper"
    assert any("recipe 'paper', the default" in line for line in said)  # the header says the default was chosen, and why
    assert record["metrics"] and record["timings"]["train_steps"] == 1
    train = record["config"]["train"]
    splits = REGISTRY.dataset(dataset).splits
    for key, value in recipe.train.items():  # the recipe otherwise untouched
        if key == "train_split" and value not in splits:  # trainaug on VOC 2007: the dataset's own split
            assert train[key] == "" and record["train_split"] == REGISTRY.dataset(dataset).train_split
            continue
        if key not in overrides:
            expected = list(value) if isinstance(value, tuple) else value
            assert (list(train[key]) if isinstance(train[key], tuple) else train[key]) == expected, key
    for key, value in recipe.model.items():
        if key not in overrides:
            got = record["config"]["model"][key]
            assert (list(got) if isinstance(got, tuple) else got) == (
                list(value) if isinstance(value, tuple) else value), key
    assert record["deviations"] == list(recipe.deviations)


def test_every_paper_recipe_says_where_each_value_comes_from():
    """A source for each train and model value (paper section or reference file:line); segbench's own choices
    say "deviation: ..." and a deviation line names them (the conformance kit's rule, `segbench check`)."""
    from segbench.testing.checks import paper_recipe_problems

    for name, spec in sorted(REGISTRY.methods.items()):
        assert not paper_recipe_problems(spec), (name, paper_recipe_problems(spec))
        assert spec.recipes["paper"].deviations, name  # none of the 19 is the paper's setting in every respect


def test_the_sources_rule_fails_on_a_recipe_that_does_not_cite():
    from segbench.specs import MethodSpec, Recipe
    from segbench.testing.checks import paper_recipe_problems

    def spec(recipe):
        return MethodSpec(name="m", build=lambda n: None, supervision="image", outputs={"scores"},
                          options={"backbone": "x"}, recipes=[recipe])

    assert paper_recipe_problems(spec(Recipe("paper", train={"lr": 0.1}, model={"backbone": "vgg16"}))) == [
        "paper recipe values without a source: ['backbone', 'lr']"]
    own = Recipe("paper", train={"lr": 0.1}, sources={"lr": "deviation: chosen here"})
    assert "no deviation line names `lr`" in paper_recipe_problems(spec(own))[0]
    declared = Recipe("paper", train={"lr": 0.1}, sources={"lr": "deviation: chosen here"},
                      deviations=("`lr` 0.1 chosen here; the paper does not give it",))
    assert paper_recipe_problems(spec(declared)) == []


# What the papers (or the authors' reference code) say, as docs/paper_recipes.md cites them:
# (optimizer, lr, momentum, effective batch, steps). FCN-16s has no at-once reference (a declared deviation).
PAPER_SAYS = {
    "weldon": ("sgd", 1e-2, 0.9, 40, 2520),  # wsl.resnet.torch README.md:33, 20 epochs of VOC 2007 trainval
    "wildcat": ("sgd", 1e-3, 0.9, 16, 6280),  # wildcat.pytorch README.md:25: backbone 1e-3, transfer x10
    "fcn32s": ("sgd", 1e-10, 0.99, 1, 100_000),  # voc-fcn32s solver.prototxt, solve.py
    "fcn8s": ("sgd", 1e-10, 0.99, 1, 300_000),  # voc-fcn8s-atonce solver.prototxt, solve.py
    "deeplab_v1": ("sgd", 1e-3, 0.9, 20, 6000),  # TPAMI Sec. 4.1.1, LargeFOV solver.prototxt
    "deeplab_v2": ("sgd", 2.5e-4, 0.9, 10, 20_000),  # TPAMI Sec. 4.1.2
    "deeplab_v3": ("sgd", 7e-3, 0.9, 16, 30_000),  # arXiv 1706.05587 Sec. 4.1
    "deeplab_v3plus": ("sgd", 7e-3, 0.9, 16, 30_000),  # ECCV 2018 Sec. 4, as v3
    "deconvnet": ("sgd", 1e-2, 0.9, 64, 60_000),  # DeconvNet solver.prototxt, two stages 20k + 40k
    "mask_rcnn": ("sgd", 2e-2, 0.9, 16, 90_000),  # Sec. 3.1; Detectron 1x schedule
}


@pytest.mark.parametrize("method", sorted(REGISTRY.methods))
def test_dry_run_resolves_a_paper_recipe_to_its_papers_numbers_without_training(method, tmp_path):
    """``--dry-run`` at paper scale on the CPU: the plan's optimizer, lr, momentum, effective batch and steps are
    the paper's (or declared as segbench's own), the model is counted, and nothing is written."""
    from segbench.engine.run import run_experiment

    outcome = run_experiment(method, "shapes", recipe="paper", overrides=offline(REGISTRY.method(method)), runs=tmp_path,
                             progress=False, dry_run=True)
    plan = outcome.plan
    assert plan is not None and not list(tmp_path.iterdir())  # no record, no checkpoint, no lock
    assert plan["parameters"] > 1e6 and plan["trainable_parameters"] <= plan["parameters"]
    assert plan["lr_at"]["0%"] == pytest.approx(plan["lr"] * (1.0 if not plan["warmup_steps"] else
                                                              1 / plan["warmup_steps"]))
    got = (plan["optimizer"], plan["lr"], plan["momentum"], plan["effective_batch_size"], plan["steps"])
    recipe = REGISTRY.method(method).recipes["paper"]
    if method in PAPER_SAYS:
        assert got[0] == PAPER_SAYS[method][0] and got[1:] == pytest.approx(PAPER_SAYS[method][1:]), method
    else:  # the paper does not give them: the recipe says its values are its own
        own = [k for k in ("lr", "batch_size", "steps") if str(recipe.sources[k]).lower().startswith("deviation")]
        assert own and recipe.deviations, method
    assert plan["deviations"] == list(recipe.deviations)


@needs_shared
def test_the_command_this_tool_is_known_by_runs_on_genuine_coco(roots, tmp_path, capsys):
    """``segbench run --method weldon --dataset coco``: the default recipe on COCO is the paper's, images of every
    size are batched, and the header says which recipe and why."""
    from segbench.cli import main

    args = ["run", "--method", "weldon", "--dataset", "coco", "--root", str(roots["coco"]), "--runs-dir",
            str(tmp_path), "--set", "steps=1", "--set", "pretrained=false", "--set", "batch_size=2", "-q"]
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(recipe 'paper', the default for read from files dataset 'coco'" in err
    record = json.loads(Path(out.strip().splitlines()[-1].split("record: ", 1)[1]).read_text())
    assert record["recipe"] == "paper" and record["config"]["model"]["backbone"] == "resnet101"
    assert {"cls_map", "loc_map", "miou"} <= set(record["metrics"])


@needs_shared
def test_a_paper_recipe_on_trainaug_without_sbd_names_the_split_and_how_to_get_it(tmp_path, capsys):
    from segbench.cli import main

    try:
        main(["run", "--method", "deeplab_v1", "--dataset", "voc2012", "--root", str(VOC12_ROOT), "--runs-dir",
              str(tmp_path / "runs"), "--set", "pretrained=false", "-q"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "'trainaug'" in err and "SBD" in err and "--set download=true" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))


def test_list_methods_recipes_prints_each_paper_recipes_deviations(capsys):
    from segbench.cli import main

    try:
        main(["list", "methods", "--recipes"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    out = capsys.readouterr().out
    for name, spec in REGISTRY.methods.items():
        assert f"  {name} " in out
        for number, line in enumerate(spec.recipes["paper"].deviations, 1):
            assert f"deviation {number}: {line}" in out, name
