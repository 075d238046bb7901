"""Built-in post-processors, registered through the same hook as plugins' (no torch import here)."""

from __future__ import annotations

from segbench import hookimpl
from segbench.specs import PostprocessorSpec

CAM_MASK_OPTIONS = {
    "bg_threshold": 0.5,  # a pixel is background where every kept class's normalised map is below this
    "score_threshold": 0.0,  # a class is kept when its image score is >= this (logit 0 = probability 0.5)
    "classes": "predicted",  # predicted: kept classes only (the top class at least) | all: every class
    "num_classes": 0,  # filled by the engine
    "background": 0,  # filled by the engine (None: the dataset has no background class)
}


def build_cam_mask(**options):
    """The class-map rule as a post-processor (imports torch)."""
    from segbench.postprocess.cam import CamMask

    return CamMask(**options)


@hookimpl
def register_postprocessors(register) -> None:
    """Register ``cam_mask``: score maps -> label map for image-supervised methods."""
    register(
        PostprocessorSpec(
            name="cam_mask",
            build=build_cam_mask,
            requires_outputs={"score_maps"},
            gives_outputs={"mask"},
            options=CAM_MASK_OPTIONS,
            description="class maps -> label map: min-max normalised maps of the predicted classes, "
            "background below a threshold (applied automatically to methods without a mask output)",
        )
    )
