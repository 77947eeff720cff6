"""PyTorch modules built from specs: layers, the builder, BN recalibration, export, pruning."""
