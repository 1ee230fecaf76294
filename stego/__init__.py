"""STEGO: unsupervised semantic segmentation by distilling feature correspondences (Hamilton et al., 2022)."""

__version__ = "0.1.0"
