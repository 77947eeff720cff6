"""The search: space, objective, the study runner and its outputs."""
