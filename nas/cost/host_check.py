"""Whether a table was measured on this machine: CPU or GPU model and runtime version."""

from __future__ import annotations

import platform
from typing import Any

from nas.cost import sampling
from nas.cost.provenance import runtime_version


# ---------------------------------------------------------------------------- host check
def host_device(runtime: str) -> str:
    """This machine's device for ``runtime``: the GPU name for torch-cuda, else the CPU model."""
    if runtime == "torch-cuda":
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except ImportError:
            pass
        return "no CUDA device"
    return sampling.cpu_model()


def host_runtime_version(runtime: str) -> str:
    """This host's version of ``runtime`` (``"not installed"`` when it cannot be imported)."""
    try:
        return str(runtime_version(runtime))
    except ImportError:
        return "not installed"


def host_mismatch(provenance: dict[str, Any]) -> list[str]:
    """What differs between the host recorded in a table's provenance and this machine.

    Compares the device (CPU model, or GPU for torch-cuda), the runtime's version and the
    machine architecture; each difference reads ``"<what>: table '<x>', this host '<y>'"``.
    A field the provenance does not record is reported too: the table cannot vouch for it.
    """
    runtime = str(provenance.get("runtime", ""))
    recorded_host = provenance.get("host") if isinstance(provenance.get("host"), dict) else {}
    differences = []
    table_device = provenance.get("device") or recorded_host.get("cpu_model")
    here = host_device(runtime)
    if table_device is None:
        differences.append(f"device: table records none, this host {here!r}")
    elif str(table_device) != here:
        kind = "GPU" if runtime == "torch-cuda" else "CPU"
        differences.append(f"{kind}: table {str(table_device)!r}, this host {here!r}")
    table_version = provenance.get("runtime_version")
    here_version = host_runtime_version(runtime)
    if table_version is None:
        differences.append(f"{runtime} version: table records none, this host {here_version!r}")
    elif str(table_version) != here_version:
        differences.append(f"{runtime} version: table {str(table_version)!r}, "
                           f"this host {here_version!r}")
    machine = recorded_host.get("machine")
    if machine and str(machine) != platform.machine():
        differences.append(f"architecture: table {str(machine)!r}, this host {platform.machine()!r}")
    return differences
