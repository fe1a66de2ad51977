"""Long-tailed data: imbalance profiles, samplers, in-memory sources, augmentation."""
