"""mnv3-nas: latency-aware neural architecture search in the MobileNetV3 family.

Kept free of imports: ``import nas`` is cheap, and every module is imported where it is used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mnv3-nas")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]
