"""Constants shared across the package: input normalisation and the ignore label."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IGNORE = -1
"""Label value of unlabelled pixels in tensors (files store 255, or 0 in five-crop label PNGs)."""
