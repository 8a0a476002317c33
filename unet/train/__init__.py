"""Training: data, augmentation, losses, the training loop, metrics."""
