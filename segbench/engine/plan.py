"""``segbench run ... --dry-run``: everything a run would do, resolved, without training.

The plan holds the recipe (and why it was chosen), the dataset index (split
sizes), the effective batch size, epochs, steps, the learning-rate schedule
at a few points, the parameter groups (lr and weight decay multipliers), the
model's parameter count and its FLOPs at the crop size, the post-processors,
metrics and the recipe's declared deviations from its paper. It is checked
at paper scale on a CPU in seconds: FLOPs are counted on the ``meta`` device
(shapes only, no arithmetic) with ``torch.utils.flop_counter``.
"""

from __future__ import annotations

from typing import Any, Mapping

LR_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def make_plan(*, method_spec: Any, dataset_spec: Any, config: Any, recipe: str, why: str, train_set: Any,
              eval_set: Any, split: str, train_split: str, model: Any, world_size: int, metrics: Mapping[str, Any],
              postprocess: Mapping[str, Any], config_id: str, run_id: str, finished: str | None) -> dict[str, Any]:
    """The resolved plan of a run, as a JSON-able dict."""
    from segbench.engine.optim import lr_factor, param_groups

    train = config.train
    effective = train.batch_size * train.accumulate * world_size
    images = len(train_set)
    groups = [{"lr": g["lr"], "weight_decay": g.get("weight_decay", train.weight_decay),
               "parameters": sum(p.numel() for p in g["params"])} for g in param_groups(model, train)]
    cost = model_cost(method_spec, dataset_spec, config, model, train_set, effective)
    return {
        "method": method_spec.name, "dataset": dataset_spec.name, "recipe": recipe, "recipe_reason": why,
        "train_split": train_split, "train_images": images, "eval_split": split, "eval_images": len(eval_set),
        "processes": world_size, "batch_size": train.batch_size, "accumulate": train.accumulate,
        "effective_batch_size": effective, "ema": train.ema,
        "steps": train.steps, "epochs": round(train.steps * effective / images, 3) if images else None,
        "optimizer": train.optimizer, "lr": train.lr, "momentum": train.momentum, "weight_decay": train.weight_decay,
        "schedule": train.schedule, "warmup_steps": train.warmup_steps, "milestones": list(train.milestones),
        "lr_at": {f"{int(100 * p)}%": train.lr * lr_factor(min(int(p * train.steps), train.steps - 1), train)
                  for p in LR_POINTS},
        "param_groups": groups, "crop_size": train.crop_size, "warp_size": train.warp_size,
        "scale_range": [train.scale_min, train.scale_max], "eval_size": train.eval_size, "hflip": train.hflip,
        "init": train.init or None, "parameters": cost["parameters"],
        "trainable_parameters": cost["trainable_parameters"], "flops_size": cost["flops_size"],
        "predict_gflops": cost["forward_gflops"], "train_gflops": cost["train_gflops"],
        "postprocess": list(postprocess), "metrics": sorted(metrics),
        "deviations": list(method_spec.recipes[recipe].deviations),
        "config_id": config_id, "run_id": run_id, "finished_run": finished,
    }


def flops_size(config: Any, train_set: Any) -> tuple[int, int]:
    """The input size FLOPs are counted at: the crop (or warp) size, else the first training image's size."""
    side = config.train.warp_size or config.train.crop_size
    if side:
        return side, side
    try:
        height, width = train_set[0]["meta"]["orig_size"]
        return int(height), int(width)
    except Exception:  # noqa: BLE001 - an index without readable images: an ImageNet-sized stand-in
        return 512, 512


def predict_gflops(method_spec: Any, dataset_spec: Any, config: Any, size: tuple[int, int]) -> float | None:
    """GFLOPs (2 per multiply-add) of ``predict`` on one image of ``size``, counted on the meta device; None where
    the method's prediction needs real values (e.g. a detector's non-maximum suppression)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    options = {**config.model, **({"pretrained": False} if "pretrained" in config.model else {}),
               **({"weights": None} if "weights" in config.model else {})}
    try:
        with torch.device("meta"):
            model = method_spec.build(dataset_spec.num_classes, **options)
            model.eval()
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                model.predict(torch.zeros(1, 3, *size))
    except Exception:  # noqa: BLE001 - value-dependent code cannot run on meta tensors
        return None
    return round(counter.get_total_flops() / 1e9, 3)


def model_cost(method_spec: Any, dataset_spec: Any, config: Any, model: Any, train_set: Any,
               effective_batch: int) -> dict[str, Any]:
    """What a record keeps of the model's size and compute (``RunRecord.cost``)."""
    size = flops_size(config, train_set)
    forward = predict_gflops(method_spec, dataset_spec, config, size)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "forward_gflops": forward, "flops_size": list(size),
        "train_gflops": None if forward is None else round(3 * forward * config.train.steps * effective_batch, 1),
    }


def format_plan(plan: Mapping[str, Any]) -> str:
    """The plan as the lines ``--dry-run`` prints."""
    groups = "; ".join(f"{g['parameters'] / 1e6:.2f} M at lr {g['lr']:.3g}, wd {g['weight_decay']:.3g}"
                       for g in plan["param_groups"])
    lr_at = ", ".join(f"{k} {v:.3g}" for k, v in plan["lr_at"].items())
    gflops = "n/a (value-dependent prediction)" if plan["predict_gflops"] is None else f"{plan['predict_gflops']:g}"
    crop = f"crop {plan['crop_size']}" if plan["crop_size"] else "whole images (padded into batches)"
    lines = [
        f"dry run: {plan['method']} ({plan['recipe']}{', ' + plan['recipe_reason'] if plan['recipe_reason'] else ''})"
        f" on {plan['dataset']}",
        f"  train          {plan['train_split']}: {plan['train_images']} images; {crop}"
        + (f", warped to {plan['warp_size']}" if plan["warp_size"] else "")
        + f", scale {plan['scale_range'][0]:g}-{plan['scale_range'][1]:g}, flip {plan['hflip']}",
        f"  evaluate       {plan['eval_split']}: {plan['eval_images']} images"
        + (f", resized to {plan['eval_size']}" if plan["eval_size"] else ", original size"),
        f"  batch          {plan['batch_size']}"
        + (f" x {plan['accumulate']} accumulated passes" if plan.get("accumulate", 1) > 1 else "")
        + f" x {plan['processes']} process(es) = {plan['effective_batch_size']}"
        + (f"; EMA of the weights (decay {plan['ema']:g}) evaluated" if plan.get("ema") else ""),
        f"  steps          {plan['steps']} ({plan['epochs']} epochs)",
        f"  optimizer      {plan['optimizer']}, lr {plan['lr']:g}, momentum {plan['momentum']:g}, "
        f"weight decay {plan['weight_decay']:g}",
        f"  schedule       {plan['schedule']}" + (f" at {plan['milestones']}" if plan["milestones"] else "")
        + f", warmup {plan['warmup_steps']}; lr at {lr_at}",
        f"  param groups   {groups}",
        f"  model          {plan['parameters'] / 1e6:.2f} M parameters ({plan['trainable_parameters'] / 1e6:.2f} M "
        f"trainable); predict {gflops} GFLOPs at {plan['flops_size'][0]}x{plan['flops_size'][1]}"
        + (f"; training {plan['train_gflops'] / 1e3:.4g} TFLOPs (3 x forward x steps x batch)"
           if plan.get("train_gflops") is not None else ""),
        f"  init           {plan['init'] or 'as built (pretrained weights as the recipe says)'}",
        f"  postprocess    {', '.join(plan['postprocess']) or 'none'}",
        f"  metrics        {', '.join(plan['metrics'])}",
        f"  run            {plan['run_id']} (config {plan['config_id']})"
        + (f"; finished already: {plan['finished_run']}" if plan["finished_run"] else ""),
    ]
    lines += [f"  deviation {i}    {line}" for i, line in enumerate(plan["deviations"], 1)]
    return "\n".join(lines)
