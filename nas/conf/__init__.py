"""Hydra configs of the command-line apps (a package so Hydra can find them when installed)."""
