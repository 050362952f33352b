"""segbench: one protocol to benchmark semantic segmentation transformers.

Accuracy (single/multi-scale mIoU), cost (params, MACs, latency, memory), failure
modes (object size, per class) and robustness (Cityscapes-C) for Segmenter, SETR,
SegFormer and CNN baselines.
"""

__version__ = "0.1.0"
