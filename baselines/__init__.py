"""Baselines on raw backbone features (paper Table 1's ResNet50 / MoCoV2 / DINO rows), built on `stego`."""
