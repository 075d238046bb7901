"""The built-in metric plugin: ``miou``, ``cls_map``, ``loc_map``, ``coco_ap``, ``trimap``, ``accuracy``,
``max_box_acc``, ``pxap`` and ``pointing_game``.

Registration imports no torch; each ``build`` imports its implementation.
Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any, Callable

from segbench import hookimpl
from segbench.specs import MetricSpec


def build_miou(**options: Any):
    """Build :class:`segbench.metrics.confusion.MeanIoU`."""
    from segbench.metrics.confusion import MeanIoU

    return MeanIoU(**options)


def build_cls_map(**options: Any):
    """Build :class:`segbench.metrics.classification.ClassificationMAP`."""
    from segbench.metrics.classification import ClassificationMAP

    return ClassificationMAP(**options)


def build_loc_map(**options: Any):
    """Build :class:`segbench.metrics.pointing.PointingMAP`."""
    from segbench.metrics.pointing import PointingMAP

    return PointingMAP(**options)


def build_coco_ap(**options: Any):
    """Build :class:`segbench.metrics.coco.CocoAP`."""
    from segbench.metrics.coco import CocoAP

    return CocoAP(**options)


def build_trimap(**options: Any):
    """Build :class:`segbench.metrics.trimap.TrimapIoU`."""
    from segbench.metrics.trimap import TrimapIoU

    return TrimapIoU(**options)


def build_accuracy(**options: Any):
    """Build :class:`segbench.metrics.accuracy.Accuracy`."""
    from segbench.metrics.accuracy import Accuracy

    return Accuracy(**options)


def _lazy(module: str, cls: str) -> Callable[..., Any]:
    """A ``build`` that imports ``segbench.metrics.<module>`` only when called and builds ``cls``."""
    def build(**options: Any):
        import importlib

        return getattr(importlib.import_module(f"segbench.metrics.{module}"), cls)(**options)

    build.__name__ = f"build_{cls}"
    build.__doc__ = f"Build :class:`segbench.metrics.{module}.{cls}`."
    return build


build_max_box_acc = _lazy("wsol_boxes", "MaxBoxAcc")
build_pxap = _lazy("wsol_pixels", "PixelAP")
build_pointing_game = _lazy("pointing_game", "PointingGame")

# Weakly supervised localization metrics, scored from the score maps: (name, build, annotation, options, description)
WSOL_METRICS = (
    ("max_box_acc", build_max_box_acc, "boxes",
     {"cam_curve_interval": 0.01, "iou_thresholds": [30, 50, 70], "cam_threshold": None},
     "MaxBoxAcc and MaxBoxAccV2 of Choe et al. 2020 (best CAM threshold, box of the largest / every 8-connected "
     "component), GT-known and top-1 localization"),
    ("pxap", build_pxap, "mask", {"bins": 1000, "ignore_index": 255},
     "pixel average precision PxAP of Choe et al. 2020 (per image and class, normalised maps, fixed-bin "
     "histograms) and the best pixel IoU pxap@best_iou"),
    ("pointing_game", build_pointing_game, "boxes", {"tolerance": 15, "subset": "all"},
     "pointing game of Zhang et al. 2016 (score-map maximum within tolerance px of the class's boxes or instance "
     "masks), mean per-class accuracy; subset all or difficult"),
)


@hookimpl
def register_metrics(register: Callable[[MetricSpec], None]) -> None:
    """Register the built-in metrics."""
    register(MetricSpec(
        name="miou",
        build=build_miou,
        requires_outputs={"mask"},
        requires_annotations={"mask"},
        primary="miou",
        options={"num_classes": None, "ignore_index": 255, "background": None},
        description="mean IoU from one confusion matrix over the dataset (void 255 ignored); "
                    "also pixel_acc, mean_acc, fw_iou",
    ))
    register(MetricSpec(
        name="cls_map",
        build=build_cls_map,
        requires_outputs={"scores"},
        requires_annotations={"labels"},
        primary="cls_map",
        options={"num_classes": None, "background": None, "variant": "voc12"},
        description="classification mAP of image-level scores (VOC devkit; variant voc12, voc07 or raw)",
    ))
    register(MetricSpec(
        name="loc_map",
        build=build_loc_map,
        requires_outputs={"score_maps"},
        requires_annotations={"boxes"},
        primary="loc_map",
        options={"num_classes": None, "background": None, "variant": "voc12", "tolerance": 18, "point": "max",
                 "confidence": "map_max"},
        late_options={"confidence": "map_max"},  # added in session 6: older ids stay
        description="pointing localization mAP of Oquab et al. 2015 (score-map maximum in a box +- tolerance px)",
    ))
    register(MetricSpec(
        name="coco_ap",
        build=build_coco_ap,
        requires_outputs={"instances"},
        requires_annotations={"boxes", "masks"},
        primary="coco_ap_segm",
        options={"num_classes": None, "background": None, "iou_types": None, "backend": "faster",
                 "annotation_file": None, "category_ids": None, "mask_threshold": 0.5},
        description="COCO box and mask AP, AP50, AP75, APs/m/l, AR1/10/100 (pycocotools COCOeval)",
    ))
    register(MetricSpec(
        name="accuracy",
        build=build_accuracy,
        requires_outputs={"scores"},
        requires_annotations={"labels"},
        primary="mean_class_accuracy",
        options={"num_classes": None, "background": None, "single_label": None},
        description="single-label accuracy and mean per-class accuracy of the argmax of the scores "
                    "(MIT67, 15-Scene; nothing on multi-label data)",
    ))
    register(MetricSpec(
        name="trimap",
        build=build_trimap,
        requires_outputs={"mask"},
        requires_annotations={"mask"},
        primary="trimap_miou",
        options={"num_classes": None, "ignore_index": 255, "widths": [1, 3, 5, 10, 20, 40],
                 "distance": "euclidean", "void_is_boundary": True},
        description="mIoU within w px of ground-truth label boundaries (void counts as a label), per width "
                    "(trimap_miou@wW) and their mean (DeepLab's trimap experiment)",
    ))
    for name, build, annotation, options, description in WSOL_METRICS:
        register(MetricSpec(name=name, build=build, requires_outputs={"score_maps"},
                            requires_annotations={annotation}, primary=name, late=True,  # older ids stay
                            options={"num_classes": None, "background": None, **options}, description=description))
