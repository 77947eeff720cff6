"""The one base class of every error this project raises for a user's mistake or a bad input.

Each error also keeps its builtin base (``ValueError``, ``RuntimeError``, ``KeyError``), so
code that caught those keeps working; ``except nas.NASError`` catches them all.
"""


class NASError(Exception):
    """Base of every mnv3-nas error (bad spec, space, table, data, checkpoint, run)."""
