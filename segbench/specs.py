"""Specs that plugins register, and the keys of samples and predictions.

Nothing here imports torch: specs are registered when ``segbench list`` or
``segbench --help`` runs, and those must stay fast. A spec's ``build`` is
called only when the object is really needed.

The contracts (see ``docs/plugins.md``):

Sample (what ``DatasetSpec.build(...)[i]`` returns), a dict:
    ``image``  uint8 tensor ``[3, H, W]``
    ``target`` dict: ``labels`` float multi-hot ``[C]`` (always; the background
               class is never labelled); ``labels_ignore`` bool ``[C]`` where a
               class is present only as "difficult" (left out of AP); where the
               dataset has them ``mask`` uint8 ``[H, W]`` (255 = void; int64
               when a dataset has more than 255 classes; the engine hands
               losses and metrics int64),
               ``boxes`` float ``[N, 4]`` XYXY pixels, ``classes`` int64 ``[N]``,
               ``masks`` bool ``[N, H, W]``, ``iscrowd`` bool ``[N]``
    ``meta``   dict: ``id`` (str), ``path`` (str or None), ``orig_size`` (H, W)

Prediction (what ``Method.predict(images)`` returns per image), a dict with any of:
    ``scores``     float ``[C]`` image-level class scores (any monotone scale)
    ``score_maps`` float ``[C, h, w]`` class score maps, any resolution
    ``mask``       int64 ``[h, w]`` label map
    ``instances``  dict ``boxes`` ``[N, 4]``, ``classes`` ``[N]``, ``scores`` ``[N]``,
                   ``masks`` ``[N, h, w]``
The engine resizes ``score_maps`` (bilinear) and ``mask`` (nearest) back to the
image's original size before any metric sees them, then applies the run's
post-processors (``PostprocessorSpec``) in order; all C score maps are resized
only when a metric or post-processor reads them (the class-map rule resizes
just the classes it keeps).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

TARGET_KEYS = ("labels", "labels_ignore", "mask", "boxes", "classes", "masks", "iscrowd")
PREDICTION_KEYS = ("scores", "score_maps", "mask", "instances")
SUPERVISION_ANNOTATIONS = {
    "image": frozenset({"labels"}),
    "pixel": frozenset({"mask"}),
    "instance": frozenset({"boxes", "masks"}),
}
RECIPE_NAMES = ("quick", "bench", "paper")


def _frozen(values) -> frozenset[str]:
    return frozenset(values or ())


@dataclass(frozen=True)
class Recipe:
    """A named, complete training setup for one method.

    ``train`` overrides fields of :class:`segbench.engine.config.TrainConfig`
    (steps, batch_size, lr, ...); ``model`` overrides the method's options;
    ``data`` overrides the dataset's options (image size, split sizes) when
    the dataset has such an option (ignored otherwise). ``postprocess`` names
    post-processors every run of the recipe applies, before those asked for
    with ``--postprocess`` (DeepLab v1's ``paper`` recipe: ``("densecrf",)``);
    ``--postprocess none`` drops them; ``postprocess_options`` gives them
    options (``{"densecrf": {"pos_xy_std": ...}}``), which ``--set`` overrides.

    ``sources`` says where each ``train`` and ``model`` value of a ``paper``
    recipe comes from (``{"lr": "Long et al. PAMI 2017, Sec. 4.2",
    "momentum": "voc-fcn8s-atonce/solver.prototxt:9"}``); a value that is
    segbench's own choice says ``"deviation: ..."``. ``deviations`` lists, one
    line each, where the recipe knowingly differs from its paper (backbone,
    pretraining data, schedule, a missing stage); runs record them and the
    leaderboard prints them as footnotes. ``requires_init`` says what a
    staged recipe starts from (``"a finished fcn32s run"``): a run of it
    without ``--init`` is refused with that text.
    """

    name: str
    description: str = ""
    train: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    postprocess: tuple[str, ...] = ()
    postprocess_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    deviations: tuple[str, ...] = ()
    requires_init: str = ""

    def __post_init__(self) -> None:
        names = (self.postprocess,) if isinstance(self.postprocess, str) else tuple(self.postprocess)
        object.__setattr__(self, "postprocess", names)
        lines = (self.deviations,) if isinstance(self.deviations, str) else tuple(self.deviations)
        object.__setattr__(self, "deviations", lines)


@dataclass(frozen=True)
class MethodSpec:
    """A method: how to build it, what it learns from and what it predicts.

    ``build(num_classes, **options)`` returns a ``torch.nn.Module`` with
    ``loss(images, targets) -> dict[str, Tensor]`` (summed for the backward
    pass) and ``predict(images) -> list[dict]`` (see the module docstring).
    ``images`` is a float batch ``[B, 3, H, W]`` normalised with the
    dataset's mean and std; ``targets`` a list of target dicts.
    ``options`` holds every option ``build`` accepts, with its default.
    ``late_options`` names options added after records of the method
    existed, each with its neutral value (the one that builds the model as
    before the option existed): at that value the option stays out of
    ``config_id``, so older records keep pooling with identical new runs.
    ``renamed_options`` maps an option's new name to the name records were
    written with (``{"beam_steps": "steps"}``): the id hashes the old name.
    """

    name: str
    build: Callable[..., Any]
    supervision: str
    outputs: frozenset[str]
    options: Mapping[str, Any] = field(default_factory=dict)
    recipes: Mapping[str, Recipe] = field(default_factory=dict)
    description: str = ""
    paper: str = ""
    plugin: str = ""
    late_options: Mapping[str, Any] = field(default_factory=dict)
    renamed_options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", _frozen(self.outputs))
        if isinstance(self.recipes, (list, tuple)):
            object.__setattr__(self, "recipes", {r.name: r for r in self.recipes})

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message when the spec is malformed."""
        _check_name(self.name, "method")
        if not callable(self.build):
            raise ValueError(f"method '{self.name}': build must be callable")
        if self.supervision not in SUPERVISION_ANNOTATIONS:
            raise ValueError(
                f"method '{self.name}': supervision must be one of "
                f"{sorted(SUPERVISION_ANNOTATIONS)}, got {self.supervision!r}"
            )
        unknown = self.outputs - set(PREDICTION_KEYS)
        if not self.outputs or unknown:
            raise ValueError(
                f"method '{self.name}': outputs must be a non-empty subset of "
                f"{list(PREDICTION_KEYS)}, got {sorted(self.outputs)}"
            )
        late = (set(self.late_options) | set(self.renamed_options)) - set(self.options)
        if late:
            raise ValueError(f"method '{self.name}': late or renamed options {sorted(late)} are not options")
        for recipe in self.recipes.values():
            bad = set(recipe.model) - set(self.options)
            if bad:
                raise ValueError(
                    f"method '{self.name}': recipe '{recipe.name}' sets unknown "
                    f"option(s) {sorted(bad)}; options are {sorted(self.options)}"
                )

    @property
    def requires_annotations(self) -> frozenset[str]:
        """Annotations a training dataset must have for this method."""
        return SUPERVISION_ANNOTATIONS[self.supervision]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: ``build(root, split, **options)`` returns a torch Dataset of samples.

    ``annotations`` lists the target keys every sample carries (``labels``
    always). ``background`` is the index of the background class in
    ``classes`` (``None`` when there is none); image-level metrics leave it
    out. ``metric_defaults`` maps a metric name to option defaults that
    depend on the dataset (e.g. the pointing tolerance, the AP variant); it may
    be a function of the resolved dataset options (the tolerance scales with
    ``image_size``): use :meth:`metric_defaults_for`.
    ``needs_root`` is False for generated datasets. ``default_recipe`` is the
    recipe a run gets without ``--recipe`` (``paper`` for real data, ``quick``
    for ``shapes``); ``crop_size`` the training crop of a recipe that sets
    none (0: whole images, padded into batches). ``path_options`` names the
    options that are files or folders (``annotations``, ``sbd_root``): the
    fingerprints identify their contents, so they stay out of ``config_id``.

    ``classes_from_files``: the classes (and the background) are read from the
    dataset's own files (``folder``, ``voc_format``, ``coco_format``);
    ``classes`` is then a placeholder, and the built dataset carries the real
    ``classes`` and ``background``: :func:`resolve_classes` gives the spec
    the engine uses once the dataset is built.
    """

    name: str
    build: Callable[..., Any]
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    annotations: frozenset[str]
    options: Mapping[str, Any] = field(default_factory=dict)
    background: int | None = 0
    train_split: str = "train"
    eval_split: str = "val"
    metric_defaults: Mapping[str, Mapping[str, Any]] | Callable[[Mapping[str, Any]], Mapping] = field(
        default_factory=dict
    )
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    needs_root: bool = True
    default_recipe: str = "paper"
    crop_size: int = 0
    path_options: tuple[str, ...] = ()
    description: str = ""
    citation: str = ""
    url: str = ""
    plugin: str = ""
    classes_from_files: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", _frozen(self.annotations) | {"labels"})
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "splits", tuple(self.splits))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def metric_defaults_for(self, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The metric defaults for these dataset options."""
        defaults = self.metric_defaults(options) if callable(self.metric_defaults) else self.metric_defaults
        return {name: dict(values) for name, values in defaults.items()}

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message when the spec is malformed."""
        _check_name(self.name, "dataset")
        if not callable(self.build):
            raise ValueError(f"dataset '{self.name}': build must be callable")
        if not self.classes:
            raise ValueError(f"dataset '{self.name}': classes must not be empty")
        unknown = self.annotations - set(TARGET_KEYS)
        if unknown:
            raise ValueError(f"dataset '{self.name}': unknown annotation kinds {sorted(unknown)}")
        for split in (self.train_split, self.eval_split):
            if split not in self.splits:
                raise ValueError(f"dataset '{self.name}': split '{split}' not in {list(self.splits)}")
        if self.background is not None and not 0 <= self.background < len(self.classes):
            raise ValueError(f"dataset '{self.name}': background index out of range")


def resolve_classes(spec: DatasetSpec, *datasets: Any) -> DatasetSpec:
    """``spec`` with the classes and background of the built ``datasets`` when its classes come from files
    (``classes_from_files``); else ``spec`` itself. Datasets that disagree (a training file with other
    categories than the evaluation file) are a ``ConfigError``: one model cannot predict both."""
    if not spec.classes_from_files or not datasets:
        return spec
    from segbench.errors import ConfigError

    first = datasets[0]
    classes, background = tuple(first.classes), first.background
    for other in datasets[1:]:
        if tuple(other.classes) != classes or other.background != background:
            raise ConfigError(
                f"dataset '{spec.name}': split '{other.split}' has classes {list(other.classes)} (background "
                f"{other.background}) but split '{first.split}' has {list(classes)} (background {background})"
            )
    return replace(spec, classes=classes, background=background)


@dataclass(frozen=True)
class MetricSpec:
    """A metric: ``build(**options)`` returns an object with ``reset()``,
    ``update(predictions, targets)`` and ``compute() -> dict[str, float]``,
    and optionally ``per_class() -> dict[str, list[float]]``.

    ``options`` holds every option with its default; the engine fills
    ``num_classes`` and ``background`` from the dataset.

    The metric applies to a run when the method's outputs include one of
    ``requires_outputs`` and the dataset's annotations include all of
    ``requires_annotations``. ``primary`` names the key of ``compute()``
    shown in leaderboards.

    A metric's options enter ``config_id``. ``late`` marks a metric added
    after records of the runs it applies to existed: at its default options it
    stays out of the id, so those runs keep their ids (their records simply
    lack its values). ``late_options`` names options added later, each with
    its neutral value (the one that computes as before), left out of the id
    at that value, as :attr:`MethodSpec.late_options`.
    """

    name: str
    build: Callable[..., Any]
    requires_outputs: frozenset[str]
    requires_annotations: frozenset[str]
    primary: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    plugin: str = ""
    late: bool = False
    late_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requires_outputs", _frozen(self.requires_outputs))
        object.__setattr__(self, "requires_annotations", _frozen(self.requires_annotations))
        if not self.primary:
            object.__setattr__(self, "primary", self.name)

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message when the spec is malformed."""
        _check_name(self.name, "metric")
        if not callable(self.build):
            raise ValueError(f"metric '{self.name}': build must be callable")
        if not self.requires_outputs:
            raise ValueError(f"metric '{self.name}': requires_outputs must not be empty")

    def applies(self, outputs: frozenset[str], annotations: frozenset[str]) -> bool:
        """True when a method with ``outputs`` on a dataset with ``annotations`` can be scored."""
        return bool(self.requires_outputs & outputs) and self.requires_annotations <= annotations


@dataclass(frozen=True)
class PostprocessorSpec:
    """A post-processor: ``build(**options)`` returns a callable ``(image, prediction) -> prediction``.

    ``image`` is the uint8 ``[3, H, W]`` image at its original size and
    ``prediction`` one image's prediction dict, already resized to that size
    (see the module docstring). The callable returns the new prediction,
    typically with ``mask`` added or refined. It may also read or write
    ``mask_scores``: float ``[C, H, W]`` non-negative per-class scores whose
    argmax is ``mask`` (the class-map rule writes them; the dense CRF reads
    them as its unary when the method has no per-pixel probabilities).
    ``options`` holds every option with its default; the engine fills
    ``num_classes``, ``background`` and ``supervision`` (the method's) when
    the spec lists them. ``requires_outputs``: the prediction keys it needs
    (one of them is enough).
    """

    name: str
    build: Callable[..., Any]
    requires_outputs: frozenset[str] = frozenset({"score_maps"})
    gives_outputs: frozenset[str] = frozenset({"mask"})
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    paper: str = ""
    plugin: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "requires_outputs", _frozen(self.requires_outputs))
        object.__setattr__(self, "gives_outputs", _frozen(self.gives_outputs))

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message when the spec is malformed."""
        _check_name(self.name, "postprocessor")
        if not callable(self.build):
            raise ValueError(f"postprocessor '{self.name}': build must be callable")
        for kind, keys in (("requires_outputs", self.requires_outputs), ("gives_outputs", self.gives_outputs)):
            unknown = keys - set(PREDICTION_KEYS)
            if not keys or unknown:
                raise ValueError(
                    f"postprocessor '{self.name}': {kind} must be a non-empty subset of "
                    f"{list(PREDICTION_KEYS)}, got {sorted(keys)}"
                )

    def applies(self, outputs: frozenset[str]) -> bool:
        """True when a prediction with ``outputs`` has what this post-processor reads."""
        return bool(self.requires_outputs & outputs)


def _check_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{kind} name must be a non-empty identifier, got {name!r}")
