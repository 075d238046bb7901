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
@click.argument("what", type=click.Choice(["methods", "datasets", "metrics", "plugins", "all"]), default="all")
def list_command(what: str) -> None:
    """List registered methods, datasets, metrics or plugins (broken ones with their error)."""
    from segbench.plugins import get_registry

    registry = get_registry()
    sections = ["methods", "datasets", "metrics", "plugins"] if what == "all" else [what]
    for section in sections:
        if len(sections) > 1:
            click.secho(f"{section}:", bold=True)
        if section == "methods":
            for name, spec in sorted(registry.methods.items()):
                outputs = ",".join(sorted(spec.outputs))
                click.echo(f"  {name:<16} {spec.supervision:<8} {outputs:<24} [{spec.plugin}] {spec.description}")
        elif section == "datasets":
            for name, spec in sorted(registry.datasets.items()):
                annotations = ",".join(sorted(spec.annotations))
                click.echo(f"  {name:<16} {len(spec.classes):>3} classes  {annotations:<30} [{spec.plugin}]")
        elif section == "metrics":
            for name, spec in sorted(registry.metrics.items()):
                click.echo(f"  {name:<16} {spec.description}")
        else:
            for info in sorted(registry.plugins.values(), key=lambda p: (p.builtin is False, p.name)):
                state = "ok" if info.ok else f"BROKEN: {info.error}"
                version = f" {info.version}" if info.version else ""
                click.echo(f"  {info.name}{version} ({info.module}): {state}")


# -- run -----------------------------------------------------------------------
def _run_options(func):
    options = [
        click.option("--method", "-m", required=True, help="Method name (segbench list methods)."),
        click.option("--dataset", "-d", default="shapes", show_default=True, help="Dataset name."),
        click.option("--recipe", "-r", default="quick", show_default=True, help="quick | bench | paper | ..."),
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
        click.option("--metrics", default=None, help="Comma-separated metrics (default: every applicable one)."),
        click.option("--runs-dir", default=None, type=click.Path(file_okay=False),
                     help="Where records go (default $SEGBENCH_RUNS_DIR or ./runs)."),
        click.option("--force", is_flag=True, help="Run again even when an identical finished run exists."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command("run")
@_run_options
def run_command(method, dataset, recipe, overrides, seed, split, root, device, amp, weights, metrics,
                runs_dir, force, quiet) -> None:
    """Train METHOD on DATASET with a recipe, evaluate it and write a run record."""
    from segbench.engine.config import parse_overrides

    values = parse_overrides(overrides)
    if amp is not None:
        values["amp"] = amp
    if weights is not None:
        values["model.weights"] = weights
    from segbench.engine.run import run_experiment

    outcome = run_experiment(
        method, dataset, recipe=recipe, overrides=values, seed=seed, split=split, root=root, device=device,
        metrics=[m.strip() for m in metrics.split(",") if m.strip()] if metrics else None,
        runs=runs_dir, force=force, progress=not quiet, echo=lambda m: click.echo(m, err=True),
    )
    record = outcome.record
    if outcome.reused:
        click.echo(f"identical run already finished: {outcome.path} (use --force to run it again)")
    _print_metrics(record)
    click.echo(f"record: {outcome.path}")


def _print_metrics(record: dict) -> None:
    metrics = record.get("metrics", {})
    title = f"{record['method']} ({record['recipe']}) on {record['dataset']}/{record['split']}, seed {record['seed']}"
    click.echo(title)
    width = max((len(k) for k in metrics), default=6)
    for key in sorted(metrics):
        click.echo(f"  {key:<{width}}  {100 * metrics[key]:6.2f} %")
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
def eval_command(run_id, dataset, split, root, device, runs_dir, save_predictions, quiet) -> None:
    """Evaluate a finished run's weights on a dataset and split."""
    from segbench.engine.reeval import evaluate_run

    if save_predictions and Path(save_predictions).exists():
        raise click.UsageError(f"{save_predictions} already exists; choose another file")
    record = evaluate_run(run_id, dataset=dataset, split=split, root=root, device=device, runs=runs_dir,
                          progress=not quiet, save_predictions=save_predictions)
    _print_metrics(record)
    if save_predictions:
        click.echo(f"predictions: {save_predictions}")


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
def leaderboard_command(metric, by, dataset, split, fmt, output, published, fractions, runs_dir, force) -> None:
    """Tables of finished runs: methods x datasets (or x metrics), mean ± std (n) over seeds."""
    from segbench.engine.run import runs_dir as default_runs
    from segbench.results.leaderboard import leaderboard, write_leaderboard

    kwargs = dict(metric=metric, by=by, published=published, dataset=dataset, split=split, percent=not fractions,
                  on_error=lambda path, message: click.echo(f"warning: {message}", err=True))
    if output:
        path = write_leaderboard(default_runs(runs_dir), Path(output), fmt=fmt, overwrite=force, **kwargs)
        click.echo(f"wrote {path}")
    else:
        click.echo(leaderboard(default_runs(runs_dir), fmt=fmt or "md", **kwargs))


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

    spec = get_registry().dataset(name)
    split = split or spec.eval_split
    dataset = create_dataset(name, split, **parse_overrides(overrides))
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

    for name, evaluation in evaluate_files(gt_path, results_path, iou_type, backend).items():
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


if __name__ == "__main__":
    main()
