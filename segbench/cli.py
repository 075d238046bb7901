"""The ``segbench`` command line (click). Heavy imports happen inside commands, so ``--help`` stays fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from segbench.errors import SegbenchError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="segbench")
def cli() -> None:
    """Benchmark segmentation and weakly supervised localization methods."""


# -- list ----------------------------------------------------------------------
@cli.command("list")
@click.argument("what", type=click.Choice(["methods", "datasets", "metrics", "postprocessors", "plugins", "all"]),
                default="all")
@click.option("--recipes", is_flag=True, help="With methods: each recipe, and where a paper recipe differs "
                                              "from its paper (deviations).")
def list_command(what: str, recipes: bool) -> None:
    """List registered methods, datasets, metrics, post-processors or plugins (broken ones with their error)."""
    from segbench.plugins import get_registry

    registry = get_registry()
    sections = ["methods", "datasets", "metrics", "postprocessors", "plugins"] if what == "all" else [what]
    for section in sections:
        if len(sections) > 1:
            click.secho(f"{section}:", bold=True)
        if section == "methods":
            for name, spec in sorted(registry.methods.items()):
                outputs = ",".join(sorted(spec.outputs))
                click.echo(f"  {name:<16} {spec.supervision:<8} {outputs:<24} [{spec.plugin}] {spec.description}")
                if recipes:
                    _echo_recipes(spec)
        elif section == "datasets":
            for name, spec in sorted(registry.datasets.items()):
                annotations = ",".join(sorted(spec.annotations))
                count = "classes from files" if spec.classes_from_files else f"{len(spec.classes):>3} classes"
                click.echo(f"  {name:<16} {count:<18} {annotations:<30} [{spec.plugin}]")
        elif section == "metrics":
            for name, spec in sorted(registry.metrics.items()):
                click.echo(f"  {name:<16} {spec.description}")
        elif section == "postprocessors":
            for name, spec in sorted(registry.postprocessors.items()):
                click.echo(f"  {name:<16} [{spec.plugin}] {spec.description}")
        else:
            for info in sorted(registry.plugins.values(), key=lambda p: (p.builtin is False, p.name)):
                state = "ok" if info.ok else f"BROKEN: {info.error}"
                version = f" {info.version}" if info.version else ""
                click.echo(f"  {info.name}{version} ({info.module}): {state}")
                if info.ok:
                    click.echo(f"      hooks: {', '.join(registry.hooks(info.name)) or 'none'}")
                    if info.registered:
                        click.echo(f"      registers: {', '.join(info.registered)}")


def _echo_recipes(spec) -> None:
    """A method's recipes, each with its description and its numbered deviations from the paper."""
    for recipe in spec.recipes.values():
        click.echo(f"      {recipe.name}: {recipe.description}")
        for number, line in enumerate(recipe.deviations, 1):
            click.echo(f"        deviation {number}: {line}")
        if recipe.name == "paper" and not recipe.deviations:
            click.echo("        deviations: none declared")


# -- run -----------------------------------------------------------------------
def _run_options(func):
    options = [
        click.option("--method", "-m", default=None, help="Method name (segbench list methods); required unless "
                                                         "--config or --from gives it."),
        click.option("--dataset", "-d", default="shapes", show_default=True, help="Dataset name."),
        click.option("--recipe", "-r", default=None,
                     help="quick | bench | paper | ... (default: paper on real datasets, quick on shapes)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a recipe field (train, model, data or metric option)."),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option("--split", default=None, help="Evaluation split (default: the dataset's)."),
        click.option("--root", default=None, type=click.Path(file_okay=False), help="Dataset root directory."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]"),
        click.option("--amp", default=None, type=click.Choice(["bf16", "fp16", "off"]),
                     help="Mixed precision on CUDA (recipe field amp)."),
        click.option("--weights", default=None, type=click.Path(dir_okay=False),
                     help="Local pretrained backbone weights (.pth or .safetensors)."),
        click.option("--init", "init", default=None, metavar="RUN_ID|FILE",
                     help="Start from a finished run's weights (e.g. FCN-16s from FCN-32s) or a weights file; "
                          "tensors are matched by name."),
        click.option("--metrics", default=None, help="Comma-separated metrics (default: every applicable one)."),
        click.option("--postprocess", multiple=True, metavar="NAME",
                     help="Post-processor applied to predictions (segbench list postprocessors), after the "
                          "recipe's own; repeatable; 'none' drops the recipe's."),
        click.option("--runs-dir", default=None, type=click.Path(file_okay=False),
                     help="Where records go (default $SEGBENCH_RUNS_DIR or ./runs)."),
        click.option("--force", is_flag=True, help="Run again even when an identical finished run exists."),
        click.option("--dry-run", is_flag=True, help="Resolve and check everything (recipe, data, schedule, "
                                                     "model size and FLOPs), print the plan, train nothing."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
        click.option("--nproc", default=1, show_default=True, type=int,
                     help="Data-parallel processes (starts torchrun): at most the GPUs, or the CPU cores."),
        click.option("--deterministic/--nondeterministic", default=None,
                     help="Deterministic algorithms, cuDNN and cuBLAS settings (recipe field deterministic)."),
        click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), metavar="FILE.yaml",
                     help="Run settings from a YAML file (segbench config RUN_ID prints one); --set and options "
                          "win over it."),
        click.option("--from", "from_run", default=None, metavar="RUN_ID",
                     help="The settings of that run (under --config's); --set and options win over them."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command("run")
@_run_options
def run_command(method, dataset, recipe, overrides, seed, split, root, device, amp, weights, init, metrics,
                postprocess, runs_dir, force, dry_run, quiet, nproc, deterministic, config_file, from_run) -> None:
    """Train METHOD on DATASET with a recipe, evaluate it and write a run record.

    Running a command again after an interruption resumes it from its last
    checkpoint. --nproc N trains on N processes (torchrun).
    """
    from segbench.engine.config import parse_overrides

    values = parse_overrides(overrides)
    if amp is not None:
        values["amp"] = amp
    if weights is not None:
        values["model.weights"] = weights
    if init is not None:
        values["init"] = init
    if deterministic is not None:
        values["deterministic"] = deterministic
    args = {"method": method, "dataset": dataset, "recipe": recipe, "seed": seed, "split": split, "root": root,
            "metrics": [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None,
            "postprocess": [p for item in postprocess for p in item.split(",") if p]}
    sources = None
    if config_file or from_run:  # a file's (or a finished run's) settings, under the command line's
        from segbench.configfile import combine, read_run_settings

        ctx = click.get_current_context()
        given = {key for key in args if ctx.get_parameter_source(key) != click.core.ParameterSource.DEFAULT}
        args, values, sources = combine(read_run_settings(config_file, from_run, runs_dir), args, given, values)
    if args["method"] is None:
        raise click.UsageError("Missing option '--method' / '-m' (or --config FILE / --from RUN_ID).")
    if not dry_run and _start_torchrun(nproc, device):
        return
    from segbench.engine.run import run_experiment

    try:
        outcome = run_experiment(
            args.pop("method"), args.pop("dataset"), **args, overrides=values, sources=sources, device=device,
            runs=runs_dir, force=force, progress=not quiet, echo=lambda m: click.echo(m, err=True), dry_run=dry_run,
        )
    except KeyboardInterrupt as exc:  # SIGINT / SIGTERM: say where the run stopped and how to resume it
        if str(exc) and int(os.environ.get("RANK", "0")) == 0:
            click.echo(f"{exc}", err=True)
        raise
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    if outcome.plan is not None:
        from segbench.engine.plan import format_plan

        click.echo(format_plan(outcome.plan))
        return
    record = outcome.record
    if outcome.reused:
        click.echo(f"identical run already finished: {outcome.path} (use --force to run it again)")
    _print_metrics(record)
    click.echo(f"record: {outcome.path}")
    _next_steps(record["run_id"], runs_dir)


def _next_steps(run_id: str, runs_dir: str | None) -> None:
    """What a researcher does next with a finished run (on stderr: stdout ends with the record's path)."""
    where = f" --runs-dir {runs_dir}" if runs_dir else ""
    click.echo(f"next: segbench leaderboard{where} | segbench show {run_id}{where} -o maps.png | "
               f"segbench eval {run_id}{where} --split SPLIT", err=True)


def _start_torchrun(nproc: int, device: str) -> bool:
    """With ``--nproc N`` (N > 1) outside torchrun: run this same command under torchrun and exit with its status.

    Returns False when this process should run the experiment itself.
    """
    import signal
    import subprocess

    from segbench.engine.distributed import check_nproc, launched_world_size

    if launched_world_size() > 1:
        if nproc not in (1, launched_world_size()):
            raise click.UsageError(f"--nproc {nproc} under torchrun with WORLD_SIZE={launched_world_size()}")
        return False
    check_nproc(nproc, device)
    if nproc == 1:
        return False
    ctx = click.get_current_context()
    args = ["run"]
    for param in ctx.command.params:
        if param.name == "nproc" or not isinstance(param, click.Option):
            continue
        value = ctx.params[param.name]
        if ctx.get_parameter_source(param.name) == click.core.ParameterSource.DEFAULT:
            continue
        if param.is_flag and param.secondary_opts:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            args += [param.opts[0]] if value else []
        elif param.multiple:
            for item in value:
                args += [param.opts[0], str(item)]
        else:
            args += [param.opts[0], str(value)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "segbench", *args]
    # torchrun in its own session: a Ctrl-C reaches it once, forwarded from here (it passes it to the workers,
    # which stop at a step boundary with a checkpoint)
    child = subprocess.Popen(command, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum, frame) -> None:
        forwarded.append(signum)
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if forwarded:  # the processes stopped at a step boundary with a checkpoint (torchrun itself exits 1)
        raise SystemExit(130)
    if code:
        raise SystemExit(code if code > 0 else 128 - code)
    return True


def _metric_sort_key(key: str) -> tuple:
    """Alphabetical, but ``trimap_miou@w5`` before ``@w40``: trailing numbers compare as numbers."""
    import re

    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))


def _print_metrics(record: dict) -> None:
    metrics = record.get("metrics", {})
    title = f"{record['method']} ({record['recipe']}) on {record['dataset']}/{record['split']}, seed {record['seed']}"
    click.echo(title)
    width = max((len(k) for k in metrics), default=6)
    for key in sorted(metrics, key=_metric_sort_key):
        value = metrics[key]
        shown = "   n/a" if value is None or value != value else f"{100 * value:6.2f}"
        click.echo(f"  {key:<{width}}  {shown} %")
    timings = record.get("timings", {})
    if timings:
        click.echo(f"  time: {timings.get('total_s', 0):.1f} s (train {timings.get('train_s', 0):.1f} s, "
                   f"eval {timings.get('eval_s', 0):.1f} s)")


# -- eval ----------------------------------------------------------------------
@cli.command("eval")
@click.argument("run_id")
@click.option("--dataset", "-d", default=None, help="Dataset (default: the run's).")
@click.option("--split", default=None, help="Split (default: the run's).")
@click.option("--root", default=None, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--runs-dir", default=None, type=click.Path(file_okay=False))
@click.option("--save-predictions", default=None, type=click.Path(dir_okay=False),
              help="Write instance predictions as a COCO results JSON (score it with segbench coco-eval).")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--tta", default=None, help="Test-time augmentation: flip, ms:0.5,1.0,1.5, ms:...+flip, or '' "
                                          "for none (default: the run's).")
@click.option("--slide", default=None, metavar="SIZE,STRIDE", help="Sliding-window evaluation, or '' for none "
                                                                  "(default: the run's).")
def eval_command(run_id, dataset, split, root, device, runs_dir, save_predictions, quiet, tta, slide) -> None:
    """Evaluate a finished run's weights on a dataset and split."""
    from segbench.engine.reeval import evaluate_run

    if save_predictions and Path(save_predictions).exists():
        raise click.UsageError(f"{save_predictions} already exists; choose another file")
    record = evaluate_run(run_id, dataset=dataset, split=split, root=root, device=device, runs=runs_dir,
                          progress=not quiet, save_predictions=save_predictions, tta=tta, slide=slide)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports
    _print_metrics(record)
    train = record["config"]["train"]
    if train.get("tta") or train.get("slide"):
        from segbench.engine.tta import tta_label

        click.echo(f"  test-time: {tta_label(train.get('tta', ''), train.get('slide', ''))}")
    if save_predictions:
        click.echo(f"predictions: {save_predictions}")


# -- predict -------------------------------------------------------------------
@cli.command("predict")
@click.argument("run_id")
@click.argument("paths", nargs=-1, required=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--score-maps", is_flag=True, help="Also write score_maps/NAME.npz (float16 [C, H, W]).")
@click.option("--overlay", is_flag=True, help="Also write overlays/NAME.png (the label map over the image).")
@click.option("--tta", default=None, help="Test-time augmentation: flip, ms:0.5,1.0,1.5, ms:...+flip, or '' "
                                          "for none (default: the run's).")
@click.option("--slide", default=None, metavar="SIZE,STRIDE", help="Sliding-window prediction, or '' for none "
                                                                  "(default: the run's).")
@click.option("--coco-gt", default=None, type=click.Path(dir_okay=False),
              help="Instance methods: take image and category ids from this COCO ground truth (by file name).")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Images per batch (default: the "
                                                                               "run's eval_batch_size).")
@click.option("--runs-dir", default=None, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def predict_command(run_id, paths, out, score_maps, overlay, tta, slide, coco_gt, device, batch_size, runs_dir,
                    force, quiet) -> None:
    """Predict images (files, folders, globs) with a finished run: label-map PNGs, score maps, COCO results."""
    from segbench.predict import predict_run

    result = predict_run(run_id, paths, out, runs=runs_dir, device=device, batch_size=batch_size, tta=tta,
                         slide=slide, score_maps=score_maps, overlay=overlay, coco_gt=coco_gt, force=force,
                         progress=not quiet)
    files, images = len(result.files), result.images
    click.echo(f"wrote {files} file{'s' * (files != 1)} for {images} image{'s' * (images != 1)} under {result.out} "
               f"({result.seconds:.1f} s)")


# -- show ----------------------------------------------------------------------
@cli.command("show")
@click.argument("run_id")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--images", default=6, show_default=True, type=int, help="How many evaluation images (rows).")
@click.option("--classes", "max_classes", default=3, show_default=True, type=int, help="Class panels per image.")
@click.option("--start", default=0, show_default=True, type=int, help="Index of the first image.")
@click.option("--split", default=None, help="Split (default: the run's).")
@click.option("--root", default=None, type=click.Path(file_okay=False))
@click.option("--device", default="cpu", show_default=True)
@click.option("--runs-dir", default=None, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--confusion", is_flag=True, help="The run's row-normalised miou confusion matrix instead.")
@click.option("--top", default=None, type=int, help="With --confusion: only the N most confused classes.")
@click.option("--predictions", is_flag=True, help="Image | ground truth | prediction rows instead (label maps, "
                                                  "or instances as masks and boxes).")
@click.option("--threshold", default=0.5, show_default=True, type=float,
              help="With --predictions: the lowest score of an instance drawn.")
@click.option("--curves", is_flag=True, help="The training loss and validation curves instead (from the record).")
def show_command(run_id, out, images, max_classes, start, split, root, device, runs_dir, force, confusion, top,
                 predictions, threshold, curves) -> None:
    """A PNG grid of images with each present class's score map overlaid (CAM figures); or, with
    --confusion, the confusion matrix; or, with --predictions, predictions beside the ground truth."""
    from segbench import show

    if confusion + predictions + curves > 1:
        raise click.UsageError("--confusion, --predictions and --curves are different figures: choose one")
    if top is not None and not confusion:
        raise click.UsageError("--top N goes with --confusion")
    if curves:
        path = show.show_curves(run_id, out, runs=runs_dir, overwrite=force)
    elif confusion:
        path = show.show_confusion(run_id, out, top=top, runs=runs_dir, overwrite=force)
    elif predictions:
        path = show.show_predictions(run_id, out, images=images, start=start, split=split, root=root,
                                     runs=runs_dir, device=device, threshold=threshold, overwrite=force)
    else:
        path = show.show_run(run_id, out, images=images, max_classes=max_classes, split=split, root=root,
                             runs=runs_dir, device=device, start=start, overwrite=force)
    click.echo(f"wrote {path}")


# -- compare -------------------------------------------------------------------
@cli.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--out", "-o", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Also write compare.md, metrics.csv and per_class.csv (and differences.png) into DIR.")
@click.option("--images", default=0, show_default=True, type=int,
              help="With -o: the N images where the runs differ most (per-image IoU) as image | GT | A | B rows.")
@click.option("--root", default=None, type=click.Path(file_okay=False))
@click.option("--device", default="cpu", show_default=True)
@click.option("--runs-dir", default=None, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite the files in DIR.")
def compare_command(run_a, run_b, out_dir, images, root, device, runs_dir, force) -> None:
    """Differences B - A of two runs on the same data: per metric, per class, and the most different images."""
    from segbench.compare import compare_runs, draw_differences, write_comparison

    if images and not out_dir:
        raise click.UsageError("--images draws into a PNG: add -o DIR")
    comparison = compare_runs(run_a, run_b, runs_dir)
    click.echo(comparison.to_markdown(), nl=False)
    if out_dir:
        for path in write_comparison(comparison, out_dir, overwrite=force):
            click.echo(f"wrote {path}", err=True)
    if images:
        path, _ = draw_differences(run_a, run_b, Path(out_dir) / "differences.png", images=images, runs=runs_dir,
                                   root=root, device=device, overwrite=force)
        click.echo(f"wrote {path}", err=True)


# -- leaderboard ---------------------------------------------------------------
@cli.command("leaderboard")
@click.option("--metric", default="auto", show_default=True, help="Metric key shown in the cells.")
@click.option("--by", type=click.Choice(["datasets", "metrics"]), default="datasets", show_default=True)
@click.option("--dataset", default=None, help="Only these datasets (comma-separated).")
@click.option("--split", default=None, help="Only runs evaluated on this split.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex"]), default=None,
              help="Output format (default: md, or from the suffix of -o FILE).")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="Write to FILE.")
@click.option("--published", is_flag=True, help="Add the papers' numbers beside the reproduced ones.")
@click.option("--fractions", is_flag=True, help="Values as fractions instead of percent.")
@click.option("--runs-dir", default=None, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.option("--per-class", is_flag=True, help="Methods x classes: per-class IoU (miou) or AP (cls_map, loc_map) "
                                                "of --metric.")
@click.option("--columns", default=None, help="Cost columns after the metrics, comma-separated: params, gflops, "
                                            "train_tflops, batch (from the records).")
def leaderboard_command(metric, by, dataset, split, fmt, output, published, fractions, runs_dir, force,
                        per_class, columns) -> None:
    """Tables of finished runs: methods x datasets (or x metrics, or x classes), mean ± std (n) over seeds."""
    from segbench.engine.run import runs_dir as default_runs
    from segbench.results.leaderboard import leaderboard, write_leaderboard

    kwargs = dict(metric=metric, by=by, published=published, dataset=dataset, split=split, percent=not fractions,
                  on_error=lambda path, message: click.echo(f"warning: {message}", err=True), per_class=per_class,
                  columns=columns)
    try:
        if output:
            path = write_leaderboard(default_runs(runs_dir), Path(output), fmt=fmt, overwrite=force, **kwargs)
            click.echo(f"wrote {path}")
        else:
            click.echo(leaderboard(default_runs(runs_dir), fmt=fmt or "md", **kwargs))
    finally:  # also when no run has finished yet: say which are still going and which are stale
        _unfinished_note(default_runs(runs_dir))


def _unfinished_note(root: Path) -> None:
    """On stderr: the runs the table leaves out because they are not finished, ``stale`` ones (process gone) apart."""
    from segbench.engine.checkpoint import run_state
    from segbench.results.store import RunStore

    store = RunStore(root)
    if not store.root.is_dir():
        return
    states: dict[str, list[str]] = {}
    for record in store.iter_records(on_error=lambda path, message: None):
        if record.status != "finished":
            states.setdefault(run_state(record, store.path_for(record.run_id)), []).append(record.run_id)
    for state, ids in sorted(states.items()):
        hint = {"stale": " (its process is gone: run the same command again to resume it)",
                "running": " (in progress)"}.get(state, " (run the same command again to resume it)")
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        click.echo(f"note: {len(ids)} {state} run{'s' if len(ids) > 1 else ''} not in the table: {shown}{hint}",
                   err=True)


# -- data ----------------------------------------------------------------------
@cli.group("data")
def data_group() -> None:
    """Dataset tools: export, check."""


@data_group.command("export")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["voc", "coco"]), required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--split", default=None, help="Split to export (default: the dataset's evaluation split).")
@click.option("--segmentation", type=click.Choice(["rle", "polygon"]), default="rle", show_default=True,
              help="COCO instance masks as RLE or polygons.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Dataset options.")
@click.option("--overwrite", "--force", "overwrite", is_flag=True, help="Write into a non-empty directory.")
def data_export(name, fmt, out, split, segmentation, overrides, overwrite) -> None:
    """Write dataset NAME in the VOC or COCO on-disk layout."""
    from segbench.api import create_dataset
    from segbench.data.export import export
    from segbench.engine.config import parse_overrides
    from segbench.plugins import get_registry
    from segbench.specs import resolve_classes

    spec = get_registry().dataset(name)
    split = split or spec.eval_split
    dataset = create_dataset(name, split, **parse_overrides(overrides))
    spec = resolve_classes(spec, dataset)  # the classes read from the files, if so
    extra = {"segmentation": segmentation} if fmt == "coco" else {}
    paths = export(dataset, out, split, format=fmt, class_names=spec.classes, overwrite=overwrite, **extra)
    click.echo(f"wrote {len(paths)} files under {out}")


@data_group.command("check")
@click.argument("name")
@click.option("--root", default=None, type=click.Path(file_okay=False),
              help="Dataset root (default: $SEGBENCH_DATA/NAME).")
@click.option("--split", default=None, help="Only this split (default: every split whose files are there).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Dataset options.")
@click.option("--strict", is_flag=True,
              help="Warnings (e.g. split counts that differ from the official ones) fail too.")
@click.option("--quick", is_flag=True, help="Only the cheap checks a run does (no pixel decoding).")
def data_check(name, root, split, overrides, strict, quick) -> None:
    """Walk dataset NAME and print one line per problem; exit 0 only when clean."""
    from segbench.data.checks import check_dataset
    from segbench.engine.config import parse_overrides

    options = parse_overrides(overrides)
    report = check_dataset(name, root, split, full=not quick, options=options)
    for problem in report.errors + report.warnings:
        click.echo(problem.line())
    for summary in report.summaries:
        click.echo(summary, err=True)
    strict = strict or bool(options.get("strict"))
    if not report.clean(strict):
        blocking = len(report.errors) + (len(report.warnings) if strict else 0)
        click.echo(f"{name}: {blocking} problem(s)", err=True)
        raise SystemExit(1)
    click.echo(f"{name}: clean" + (f" ({len(report.warnings)} warning(s))" if report.warnings else ""), err=True)


# -- check ---------------------------------------------------------------------
@cli.command("check")
@click.argument("method")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Method options for the check.")
def check_command(method, overrides) -> None:
    """Run the conformance checks on METHOD (outputs, loss, gradients, learning, determinism)."""
    from segbench.engine.config import parse_overrides
    from segbench.testing import run_checks

    failures = 0
    for name, error in run_checks(method, **parse_overrides(overrides)):
        if error is None:
            click.echo(f"  PASS  {name}")
        else:
            failures += 1
            click.echo(f"  FAIL  {name}: {error}")
    if failures:
        raise SystemExit(1)
    click.echo(f"{method}: all checks passed")


# -- coco-eval -----------------------------------------------------------------
@cli.command("coco-eval")
@click.option("--gt", "gt_path", required=True, type=click.Path(dir_okay=False),
              help="COCO ground truth (instances_*.json).")
@click.option("--results", "results_path", required=True, type=click.Path(dir_okay=False),
              help="COCO results: a JSON list of {image_id, category_id, score, bbox and/or segmentation}.")
@click.option("--iou-type", type=click.Choice(["bbox", "segm", "both", "auto"]), default="auto", show_default=True,
              help="auto: every type the results carry.")
@click.option("--backend", type=click.Choice(["pycocotools", "faster"]), default=None,
              help="COCOeval implementation (default: the coco_ap metric's).")
def coco_eval_command(gt_path, results_path, iou_type, backend) -> None:
    """Score a COCO results file: the twelve COCO numbers per type, as COCOeval.summarize() prints them."""
    from segbench.metrics.coco import evaluate_files

    warn = lambda message: click.echo(message, err=True)  # noqa: E731
    for name, evaluation in evaluate_files(gt_path, results_path, iou_type, backend, warn=warn).items():
        click.echo(f"type={name}")
        for line in evaluation.lines():
            click.echo(line)


def _add_plugin_commands() -> None:
    from segbench.plugins import get_registry

    for impl in get_registry().pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001 - a plugin's command must not break the CLI
            click.echo(f"warning: plugin '{impl.plugin_name}' failed to add commands: {exc}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    # Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads made
    # the WELDON quickstart 3x slower (568 s vs 191 s) with identical numbers. Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _add_plugin_commands()
    try:
        cli.main(args=argv, prog_name="segbench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SegbenchError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)


# -- sweep ---------------------------------------------------------------------
# (defined after main() on purpose: added by the sweeps work without touching the commands above)
@cli.command("sweep")
@click.option("--methods", "-m", required=True, help="Comma-separated method names.")
@click.option("--datasets", "-d", default="shapes", show_default=True, help="Comma-separated dataset names.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds or ranges (0,1,2 or 0-4).")
@click.option("--recipe", "-r", default=None, help="Every cell's recipe (default: each dataset's, as run).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override for every run (--set of run).")
@click.option("--launcher", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
              show_default=True, help="local: subprocesses here; slurm / submitit-local: submitit's executors.")
@click.option("--jobs", "-j", "at_once", default=None, type=click.IntRange(min=1),
              help="Runs at a time (local: default 1); on SLURM the job array's parallelism.")
@click.option("--device", default=None, help="--device of every run (default: the run's, auto).")
@click.option("--nproc", default=0, type=click.IntRange(min=0),
              help="--nproc of every run (default: the GPUs per node of a SLURM job when > 1, else 1).")
@click.option("--partition", default=None, help="SLURM partition.")
@click.option("--gpus-per-node", default=None, type=click.IntRange(min=0), help="GPUs per SLURM job.")
@click.option("--timeout-min", default=None, type=click.IntRange(min=1),
              help="Time limit per job in minutes (submitit launchers; default 60).")
@click.option("--slurm", "slurm_options", multiple=True, metavar="KEY=VALUE",
              help="Any other submitit executor parameter (cpus_per_task=8, mem_gb=32, account=..., ...).")
@click.option("--runs-dir", default=None, type=click.Path(file_okay=False),
              help="Where records go (default $SEGBENCH_RUNS_DIR or ./runs).")
@click.option("--log-dir", default=None, type=click.Path(file_okay=False),
              help="Each run's output and submitit's files (default RUNS_DIR/.sweep).")
@click.option("--precheck/--no-precheck", default=True, show_default=True,
              help="Skip cells whose identical run already finished without starting them.")
@click.option("--dry-run", is_flag=True, help="Print the grid and what would run; start nothing.")
def sweep_command(methods, datasets, seeds, recipe, overrides, launcher, at_once, device, nproc, partition,
                  gpus_per_node, timeout_min, slurm_options, runs_dir, log_dir, precheck, dry_run) -> None:
    """Run the grid METHODS x DATASETS x SEEDS, one `segbench run` per cell, then print a summary table.

    Cells whose identical run already finished are skipped, so a sweep can be
    submitted again after failures. Exit 0 when every cell finished.
    """
    from segbench.engine.run import runs_dir as default_runs
    from segbench.sweep import SweepSpec, execute, parse_names, parse_seeds
    from segbench.sweep_launchers import slurm_parameters

    spec = SweepSpec(methods=parse_names(methods, "methods"), datasets=parse_names(datasets, "datasets"),
                     seeds=parse_seeds(seeds), recipe=recipe, overrides=list(overrides),
                     runs_dir=default_runs(runs_dir), device=device, nproc=nproc)
    slurm = slurm_parameters(slurm_options, partition=partition, gpus_per_node=gpus_per_node,
                             timeout_min=timeout_min)
    code = execute(spec, launcher, at_once, slurm, log_dir, dry_run, precheck,
                   echo=lambda message: click.echo(message, err=True), out=click.echo)
    if code:
        raise SystemExit(code)


# -- config --------------------------------------------------------------------
# (defined after main(), as sweep: added without touching the commands above)
@cli.command("config")
@click.argument("run_id")
@click.option("--runs-dir", default=None, type=click.Path(file_okay=False))
def config_command(run_id, runs_dir) -> None:
    """Print RUN_ID's resolved config as YAML: segbench run --config FILE runs it again (the same config_id)."""
    from segbench.configfile import record_yaml

    click.echo(record_yaml(run_id, runs_dir), nl=False)


if __name__ == "__main__":
    main()
