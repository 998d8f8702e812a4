"""Post-processors applied to CaR's final proposals (currently the dense CRF, docs/method.md §1.5)."""

from carbench.models.postprocess.crf import CRFParams, DenseCRF, crf_binary, crf_semantic

__all__ = ["CRFParams", "DenseCRF", "crf_binary", "crf_semantic"]
