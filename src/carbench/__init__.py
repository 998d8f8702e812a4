"""carbench: a benchmark harness for CLIP as RNN (CaR), training-free open-vocabulary segmentation."""

__version__ = "0.1.0"
