"""Data, the one training loop, checkpoints, protocols and the proxy evaluator."""
