"""Evaluate a finished run's weights again, on its own or another dataset and split."""

from __future__ import annotations

import os
from typing import Any, Mapping

from segbench.errors import ConfigError, DataError
from segbench.specs import resolve_classes


def finished_record(store: Any, run_id: str) -> dict[str, Any]:
    """The record of a finished run with weights (a hex prefix of the id is enough); a ConfigError otherwise."""
    record = store.get(run_id).to_dict()
    if record.get("status") != "finished" or not record.get("weights"):
        raise ConfigError(f"run '{record['run_id']}' has status {record.get('status')!r} and no weights to evaluate")
    return record


def build_run_model(method_spec: Any, num_classes: int, store: Any, record: dict[str, Any]):
    """The run's method rebuilt with its recorded options and loaded with its own weights (on the CPU)."""
    from segbench.engine.checkpoint import load_weights

    options = {**method_spec.options, **record["config"]["model"]}
    for key, value in (("pretrained", False), ("weights", None)):  # the run's own weights replace them
        if key in options:
            options[key] = value
    model = method_spec.build(num_classes, **options)
    weights = store.path_for(record["run_id"]).parent / record["weights"]
    if not weights.is_file():
        raise DataError(f"{weights}: weights of run '{record['run_id']}' are missing")
    load_weights(model, weights)
    if record["config"].get("train", {}).get("channels_last"):  # as the run evaluated it: the same numbers
        import torch

        model = model.to(memory_format=torch.channels_last)
    return model


def check_class_count(record: dict[str, Any], dataset_spec: Any) -> None:
    """A ConfigError when the run's model predicts another number of classes than the dataset has."""
    if dataset_spec.num_classes != len(record.get("class_names", [])):
        raise ConfigError(
            f"run '{record['run_id']}' predicts {len(record.get('class_names', []))} classes; dataset "
            f"'{dataset_spec.name}' has {dataset_spec.num_classes}"
        )


def recorded_root(record: Mapping[str, Any], root: str | os.PathLike | None = None) -> str | os.PathLike | None:
    """``root`` when given, else the dataset root the run read (``dataset_identity.root``) while it still exists."""
    if root is not None:
        return root
    saved = (record.get("dataset_identity") or {}).get("root")
    return saved if saved and os.path.isdir(saved) else None


def evaluate_run(run_id: str, *, dataset: str | None = None, split: str | None = None, root: str | None = None,
                 device: str = "auto", runs: str | os.PathLike | None = None, progress: bool = True,
                 save_predictions: str | os.PathLike | None = None, tta: str | None = None,
                 slide: str | None = None) -> dict[str, Any]:
    """Rebuild the run's method from its record, load its weights and evaluate; returns a record-like dict.

    ``save_predictions`` writes the instance predictions as a COCO results
    JSON (methods with ``instances`` outputs only). ``tta`` and ``slide``
    (:mod:`segbench.engine.tta`) replace the run's own (``None``: the run's;
    ``""``: none); the returned config says which were used.

    In a process group (torchrun), each process evaluates a contiguous shard
    and rank 0 computes the metrics from the gathered states: the numbers
    equal a one-process evaluation's.
    """
    from segbench.api import create_dataset
    from segbench.engine.config import resolve_config
    from segbench.engine.device import resolve_device
    from segbench.engine.evaluate import evaluate
    from segbench.engine.data import make_eval_loader
    from segbench.engine.distributed import check_distributable, setup, teardown
    from segbench.engine.run import applicable_metrics, metric_objects, postprocess_chain, postprocess_objects, runs_dir
    from segbench.plugins import get_registry
    from segbench.results.store import RunStore

    store = RunStore(runs_dir(runs))
    record = finished_record(store, run_id)
    run_id = record["run_id"]
    registry = get_registry()
    method_spec = registry.method(record["method"])
    dataset_spec = registry.dataset(dataset or record["dataset"])
    if not dataset_spec.classes_from_files:  # else checked once the dataset has read its classes
        check_class_count(record, dataset_spec)
    split = split or (record["split"] if dataset is None else dataset_spec.eval_split)
    saved_post = record["config"].get("postprocess")
    requested = [n for n in saved_post if n != "cam_mask"] if saved_post is not None else None
    chain, outputs = postprocess_chain(method_spec, dataset_spec, registry, requested)
    specs = applicable_metrics(method_spec, dataset_spec, registry, outputs=outputs)
    if save_predictions is not None and "coco_ap" not in specs:
        raise ConfigError(
            f"--save-predictions writes COCO results of instance predictions; method '{method_spec.name}' "
            f"on dataset '{dataset_spec.name}' has none (outputs: {', '.join(sorted(method_spec.outputs))})"
        )
    test_time = run_test_time(method_spec, record, tta, slide)
    config = resolve_config(method_spec, dataset_spec, specs, record["recipe"], {}, chain)
    for name, options in (saved_post or {}).items():  # the run's own post-processing options
        config.postprocess.get(name, {}).update(options)
    if dataset is None:  # the run's own data and metric options (e.g. the pointing tolerance of its image size)
        config.data.update(record["config"]["data"])
        for name, options in record["config"].get("metrics", {}).items():
            if name in config.metrics:
                config.metrics[name].update(options)
    dist, torch_device = setup(resolve_device(device))
    try:
        root = recorded_root(record, root) if dataset is None else root  # the run's own data: where it was read
        eval_set = create_dataset(dataset_spec.name, split, root=root, **config.data)
        dataset_spec = resolve_classes(dataset_spec, eval_set)
        check_class_count(record, dataset_spec)
        model = build_run_model(method_spec, dataset_spec.num_classes, store, record).to(torch_device)
        train = record["config"]["train"]
        batch_size = train.get("eval_batch_size", 16)
        loader = make_eval_loader(eval_set, batch_size, 0, 0, dist)
        metrics = metric_objects(specs, config, dataset_spec, eval_set)
        check_distributable(metrics, dist.world_size)
        post = postprocess_objects(chain, config, method_spec, dataset_spec)
        result = evaluate(model, loader, metrics, torch_device, dataset_spec.mean, dataset_spec.std,
                          eval_size=train.get("eval_size", 0), channels_last=train.get("channels_last", False),
                          progress=progress, postprocessors=post, dist=dist,
                          tta=test_time["tta"], slide=test_time["slide"])
        if save_predictions is not None and dist.is_main:
            metrics["coco_ap"].save_predictions(save_predictions)
        used = {**record["config"], "train": {**train, **test_time}}
        return {**record, "dataset": dataset_spec.name, "split": split, "metrics": result.metrics,
                "config": used, "timings": {"total_s": result.seconds, "eval_s": result.seconds}}
    finally:
        teardown(dist)


def run_test_time(method_spec: Any, record: dict[str, Any], tta: str | None = None,
                  slide: str | None = None) -> dict[str, str]:
    """``{"tta", "slide"}``: the given ones, else the run's own (older records: none), checked against the method."""
    from segbench.engine.tta import check_method, parse_slide, parse_tta

    train = record["config"]["train"]
    tta = train.get("tta", "") if tta is None else tta.strip()
    slide = train.get("slide", "") if slide is None else slide
    parse_tta(tta)
    window = parse_slide(slide)
    chosen = {"tta": tta, "slide": f"{window[0]},{window[1]}" if window else ""}
    check_method(method_spec, **chosen)
    return chosen
