"""segbench-densecrf: the fully connected CRF (Kraehenbuehl & Koltun, NIPS 2011) as a post-processor.

Registration only: numpy, torch and the compiled CRF (``pydensecrf2``) are
imported when the post-processor is built, so ``segbench list`` stays fast.
"""

from __future__ import annotations

from typing import Any

from segbench import PostprocessorSpec, hookimpl

__version__ = "0.1.0"

PAPER = (
    "P. Kraehenbuehl, V. Koltun. Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials. "
    "NIPS 2011; as used by L.-C. Chen, G. Papandreou, I. Kokkinos, K. Murphy, A. L. Yuille. Semantic Image "
    "Segmentation with Deep Convolutional Nets and Fully Connected CRFs. ICLR 2015 (DeepLab v1)."
)

# DeepLab-LargeFOV's cross-validated values (DeepLab v1 code release); w2, theta_gamma and the
# 10 iterations are the defaults DeepLab v1 and v2 state in their papers (see README.md).
OPTIONS: dict[str, Any] = {
    "iterations": 10,  # mean-field iterations
    "bilateral_weight": 4.0,  # w1: appearance (bilateral) kernel weight
    "theta_alpha": 121.0,  # bilateral kernel: position std, pixels
    "theta_beta": 5.0,  # bilateral kernel: colour std, RGB levels (0..255)
    "gaussian_weight": 3.0,  # w2: smoothness kernel weight
    "theta_gamma": 3.0,  # smoothness kernel: position std, pixels
    "unary": "auto",  # auto | softmax | probs | scores: where P in the unary -log P comes from
    "floor": 1e-5,  # probabilities are clipped below at this before -log (pydensecrf's clip)
    "supervision": None,  # filled by the engine: the method's supervision
}


def build_densecrf(**options: Any):
    """Build :class:`segbench_densecrf.crf.DenseCRF` (imports numpy, torch and pydensecrf)."""
    from segbench_densecrf.crf import DenseCRF

    return DenseCRF(**options)


def postprocessor_spec() -> PostprocessorSpec:
    """The ``densecrf`` post-processor spec."""
    return PostprocessorSpec(
        name="densecrf",
        build=build_densecrf,
        requires_outputs={"score_maps"},
        gives_outputs={"mask"},
        options=dict(OPTIONS),
        description="fully connected CRF (Kraehenbuehl & Koltun 2011), mean field, DeepLab's parameters: "
                    "refines mask from -log probabilities and the RGB image (pydensecrf2)",
        paper=PAPER,
    )


@hookimpl
def register_postprocessors(register) -> None:
    """Register ``densecrf``."""
    register(postprocessor_spec())
