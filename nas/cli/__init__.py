"""Command-line entry points (the only place that parses arguments or composes configs)."""
