"""Datasets, transforms, five-crop, KNN mining and synthetic scenes; import the submodules you need."""
