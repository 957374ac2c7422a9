"""Data: reading images, the eval transform (and later datasets and samplers)."""
