"""vaeserve.training: train VAEs in PyTorch and export model bundles for vaeserve."""
