"""Costs of an architecture: MAdds and parameters (fvcore), latency (timing, lookup tables)."""
