"""Recipe resolution and ``--set`` overrides."""

import dataclasses

import pytest

from segbench.engine import config as config_module
from segbench.engine.config import TrainConfig, identity_dict, parse_overrides, parse_value, resolve_config
from segbench.errors import ConfigError, UnknownNameError
from segbench.specs import DatasetSpec, MethodSpec, MetricSpec, Recipe


def _build(*args, **kwargs):
    return None


METHOD = MethodSpec(
    name="toy", build=_build, supervision="image", outputs={"scores"},
    options={"backbone": "tiny", "kmax": 1, "alpha": 0.5, "pretrained": False},
    recipes=[Recipe("quick", train={"steps": 5, "lr": 0.1}, model={"kmax": 3}, data={"image_size": 32}),
             Recipe("bench"), Recipe("paper")],
)
DATASET = DatasetSpec(
    name="toyset", build=_build, classes=("bg", "a"), splits=("train", "val"), annotations={"labels"},
    options={"image_size": 96, "seed": 0}, metric_defaults={"loc_map": {"tolerance": 4}},
)
METRICS = {
    "loc_map": MetricSpec("loc_map", _build, {"score_maps"}, {"boxes"}, options={"tolerance": 18, "variant": "voc12"}),
    "cls_map": MetricSpec("cls_map", _build, {"scores"}, {"labels"}, options={"variant": "voc12"}),
}


def test_recipe_then_dataset_defaults_then_overrides():
    config = resolve_config(METHOD, DATASET, METRICS, "quick", {"alpha": 0.7, "seed": 3})
    assert config.train.steps == 5 and config.train.lr == 0.1
    assert config.train.batch_size == TrainConfig().batch_size
    assert config.model == {"backbone": "tiny", "kmax": 3, "alpha": 0.7, "pretrained": False}
    assert config.data == {"image_size": 32, "seed": 3}
    assert config.metrics["loc_map"]["tolerance"] == 4  # the dataset's default beats the metric's


def test_dotted_keys_and_ambiguity():
    clashing = dataclasses.replace(METHOD, options={**METHOD.options, "image_size": 64})
    with pytest.raises(ConfigError, match=r"--set image_size is ambiguous; say one of model.image_size, data.image_size"):
        resolve_config(clashing, DATASET, METRICS, "quick", {"image_size": 48})
    config = resolve_config(clashing, DATASET, METRICS, "quick", {"data.image_size": 48})
    assert config.data["image_size"] == 48 and config.model["image_size"] == 64
    with pytest.raises(ConfigError, match="unknown --set key 'model.variant'"):
        resolve_config(METHOD, DATASET, METRICS, "quick", {"model.variant": 1})
    config = resolve_config(METHOD, DATASET, METRICS, "quick", {"metrics.cls_map.variant": "raw", "train.lr": 1})
    assert config.metrics["cls_map"]["variant"] == "raw" and config.metrics["loc_map"]["variant"] == "voc12"
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_metric_defaults_follow_the_final_dataset_options():
    scaled = dataclasses.replace(DATASET, metric_defaults=lambda o: {"loc_map": {"tolerance": o["image_size"] // 8}})
    assert resolve_config(METHOD, scaled, METRICS, "quick", {}).metrics["loc_map"]["tolerance"] == 4  # recipe: 32
    assert resolve_config(METHOD, scaled, METRICS, "quick", {"image_size": 96}).metrics["loc_map"]["tolerance"] == 12
    explicit = resolve_config(METHOD, scaled, METRICS, "quick", {"image_size": 96, "tolerance": 5})
    assert explicit.metrics["loc_map"]["tolerance"] == 5  # the user's value wins


def test_metric_option_without_prefix_sets_every_metric_having_it():
    config = resolve_config(METHOD, DATASET, METRICS, "quick", {"variant": "voc07", "tolerance": 9})
    assert config.metrics["cls_map"]["variant"] == config.metrics["loc_map"]["variant"] == "voc07"
    assert config.metrics["loc_map"]["tolerance"] == 9


def test_unknown_key_names_valid_ones():
    with pytest.raises(ConfigError) as info:
        resolve_config(METHOD, DATASET, METRICS, "quick", {"kmx": 2})
    message = str(info.value)
    assert "unknown --set key 'kmx'" in message and "did you mean kmax" in message and "batch_size" in message
    assert "\n" not in message


def test_unknown_recipe_and_bad_values():
    with pytest.raises(UnknownNameError, match="unknown recipe of method 'toy' 'quik'; did you mean 'quick'"):
        resolve_config(METHOD, DATASET, METRICS, "quik", {})
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, adamw"):
        resolve_config(METHOD, DATASET, METRICS, "quick", {"optimizer": "adam"})
    with pytest.raises(ConfigError, match="expects true or false"):
        resolve_config(METHOD, DATASET, METRICS, "quick", {"pretrained": "maybe"})
    with pytest.raises(ConfigError, match="expects an integer"):
        resolve_config(METHOD, DATASET, METRICS, "quick", {"steps": 2.5})


def test_parse_overrides():
    assert parse_overrides(["lr=0.1", "name=resnet18", "flag=true", "sizes=[1, 2]", "amp=off", "w=none"]) == {
        "lr": 0.1, "name": "resnet18", "flag": True, "sizes": [1, 2], "amp": "off", "w": None}
    assert parse_value("1e-3") == 0.001
    with pytest.raises(ConfigError, match="expects key=value"):
        parse_overrides(["lr"])


IDENTITY_TRAIN_FIELDS = [
    "amp", "batch_size", "channels_last", "checkpoint_every", "crop_size", "deterministic", "eval_batch_size",
    "eval_size", "gamma", "grad_clip", "head_lr_mult", "hflip", "log_every", "lr", "milestones", "momentum",
    "optimizer", "poly_power", "scale_max", "scale_min", "schedule", "steps", "sync_bn", "threads", "train_split",
    "warmup_steps", "weight_decay", "workers",
]


def test_the_train_fields_in_config_id_are_pinned():
    """A new TrainConfig field would change every run's config_id, and older records would stop pooling with new
    identical runs (it happened with milestones / gamma / train_split). Give a new field its neutral value in
    LATE_TRAIN_FIELDS instead of adding it here."""
    identity = identity_dict({"method": "m", "train": dataclasses.asdict(TrainConfig())})
    assert sorted(identity["train"]) == IDENTITY_TRAIN_FIELDS and identity["method"] == "m"


def test_a_late_field_enters_config_id_only_when_set(monkeypatch):
    monkeypatch.setitem(config_module.LATE_TRAIN_FIELDS, "ema", 0.0)
    before = {"train": {"steps": 10}}
    assert identity_dict({"train": {"steps": 10, "ema": 0.0}}) == before
    assert identity_dict({"train": {"steps": 10, "ema": 0.999}}) == {"train": {"steps": 10, "ema": 0.999}}


def test_options_added_or_renamed_after_records_keep_the_old_ids():
    """WELDON/WILDCAT's ``halve`` at its neutral value, WSLoc's ``beam_steps`` (once ``steps``), and the train
    fields ``warp_size`` / ``init`` at theirs hash as records written before them did."""
    from segbench.engine.config import identity_dict, resolve_config
    from segbench.plugins import get_registry

    registry = get_registry()
    shapes = registry.dataset("shapes")
    for name in ("weldon", "wildcat"):
        spec = registry.method(name)
        config = resolve_config(spec, shapes, {}, "quick").to_dict()
        assert config["model"]["halve"] is False
        identity = identity_dict(config, late_options=spec.late_options)
        assert "halve" not in identity["model"]
        assert "warp_size" not in identity["train"] and "init" not in identity["train"]
        on = identity_dict({**config, "model": {**config["model"], "halve": True}}, late_options=spec.late_options)
        assert on["model"]["halve"] is True
    wsloc = registry.method("wsloc")
    config = resolve_config(wsloc, shapes, {}, "quick", {"beam_steps": 7}).to_dict()
    identity = identity_dict(config, renamed_options=wsloc.renamed_options)
    assert identity["model"]["steps"] == 7 and "beam_steps" not in identity["model"]
    assert resolve_config(wsloc, shapes, {}, "quick", {"steps": 5}).train.steps == 5  # no longer ambiguous
