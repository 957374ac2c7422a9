"""Data: reading images, eval transforms from a weights entry, train augmentation, labelled datasets, samplers."""
