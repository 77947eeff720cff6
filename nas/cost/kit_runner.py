#!/usr/bin/env python3
"""Time the units of a ``nas-lut export-ops --backend NAME`` kit on a device.

One runner for every backend kit: it reads ``manifest.json``, opens each unit with the
runtime the manifest names (``litert``, ``executorch``, ``openvino`` or ``onnxruntime``) the
way :mod:`nas.cost.backends` does on the host, and times it with the schedule, log and CSV
of ``ort_runner.py`` (copied beside it, with ``sampling.py``). It needs the standard library,
numpy and that runtime's Python package only: not torch, not ``nas`` -- except for
ExecuTorch, whose ``executorch.runtime`` (and the pybindings under it) imports torch.

    python kit_runner.py KIT_DIR --threads 1 --out table.csv

Every unit is timed beside the runtime's empty model for its shapes (also in the kit), so
``nas-lut import table.csv`` stores each key net of the runtime's per-call cost, as
``nas-lut build --backend NAME`` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

try:  # inside the package
    from nas.cost import ort_runner
except ImportError:  # copied to a device: the modules lie beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ort_runner  # type: ignore[no-redef]  # imports sampling.py, also beside it

KIT_FORMAT = "nas-kit/1"
RUNNER_FORMAT = "nas-kit-runner/1"
#: The Python module each kit runtime needs on the device, and the package that installs it.
RUNTIME_MODULES = {"litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
                   "executorch": ("executorch.runtime", "executorch"),
                   "openvino": ("openvino", "openvino"),
                   "onnxruntime": ("onnxruntime", "onnxruntime")}

Call = Callable[[], None]


#: Runs on a device without ``nas``: its errors cannot derive from ``nas.errors.NASError``
#: (the host turns them into one, :func:`nas.cost.offhost_kits.check_kit`).
DEVICE_SIDE = True


class KitError(ValueError):
    """A kit or its runtime cannot be used here; the message names the file and the fault."""


def load_kit(directory: str | Path) -> dict[str, Any]:
    """The kit's manifest, checked to be a backend kit of a runtime this runner knows."""
    manifest = ort_runner.load_manifest(directory)
    path = Path(directory) / ort_runner.MANIFEST_NAME
    if manifest.get("kit") != KIT_FORMAT:
        raise KitError(f"{path}: not a backend kit ({manifest.get('kit')!r}); an ONNX kit "
                       "without --backend is run with ort_runner.py")
    if manifest.get("runtime") not in RUNTIME_MODULES:
        raise KitError(f"{path}: kit for runtime {manifest.get('runtime')!r}, this runner "
                       f"runs {', '.join(RUNTIME_MODULES)}")
    return manifest


def import_runtime(manifest: dict[str, Any], path: Path) -> Any:
    """The runtime's module, or a one-line :class:`KitError` naming the kit and the package."""
    module, package = RUNTIME_MODULES[manifest["runtime"]]
    try:
        if manifest["runtime"] == "openvino" and "openvino" not in sys.modules:
            # A missing openvino_telemetry makes OpenVINO use its stub: no forked process
            # posting usage events while we time (see nas.cost.backends.openvino_cpu).
            sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
        return import_module(module)
    except ImportError as err:
        raise KitError(f"{path}: a {manifest['runtime']} kit, but {module} cannot be imported "
                       f"here ({err}); install {package} (the kit was made with "
                       f"{package} {manifest.get('runtime_version')})") from None


def random_input(shape: Sequence[int], seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed).standard_normal(tuple(int(s) for s in shape)).astype("float32")


# ---------------------------------------------------------------------------- runtimes
# Each opener mirrors the backend's sampler in nas.cost.backends: same settings, same call.
def open_litert(runtime: Any, path: Path, shape: Sequence[int], threads: int, seed: int) -> Call:
    interpreter = runtime.Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()  # applies the default (XNNPACK) delegate
    return litert_call(interpreter, random_input(shape, seed))


def litert_call(interpreter: Any, array: Any) -> Call:
    """One call of an allocated interpreter on ``array`` (the host's backend times the same)."""
    index = interpreter.get_input_details()[0]["index"]
    out_index = interpreter.get_output_details()[0]["index"]
    set_tensor, invoke, get_tensor = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor

    def call() -> None:
        set_tensor(index, array)
        invoke()
        get_tensor(out_index)  # a deployment reads its output: the copy is part of a call

    return call


def _executorch_threads(threads: int) -> int:
    pool = import_module("executorch.extension.pybindings.portable_lib")
    if pool._threadpool_get_thread_count() != threads:  # process-wide pool, one thread per core
        pool._unsafe_reset_threadpool(threads)
    return int(pool._threadpool_get_thread_count())


def open_executorch(runtime: Any, path: Path, shape: Sequence[int], threads: int, seed: int) -> Call:
    import torch  # executorch.runtime takes torch tensors (it imported torch already)

    _executorch_threads(threads)
    method = runtime.Runtime.get().load_program(str(path)).load_method("forward")
    inputs = (torch.from_numpy(random_input(shape, seed)),)
    return lambda: method.execute(inputs)


def _openvino_config(threads: int) -> dict[str, str]:
    return {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(threads),
            "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}


def open_openvino(runtime: Any, path: Path, shape: Sequence[int], threads: int, seed: int) -> Call:
    compiled = runtime.Core().compile_model(str(path), "CPU", _openvino_config(threads))
    request = compiled.create_infer_request()
    feed = {0: random_input(shape, seed)}
    infer = request.infer
    return lambda: infer(feed, share_inputs=True, share_outputs=True)


def open_onnxruntime(runtime: Any, path: Path, shape: Sequence[int], threads: int, seed: int) -> Call:
    session = ort_runner.make_session(path, threads)
    return ort_runner.session_callable(session, shape, seed=seed)


OPENERS = {"litert": open_litert, "executorch": open_executorch, "openvino": open_openvino,
           "onnxruntime": open_onnxruntime}


def runtime_record(manifest: dict[str, Any], runtime: Any, threads: int) -> dict[str, Any]:
    """What the device's runtime says about itself, for the CSV's provenance."""
    name = manifest["runtime"]
    package = RUNTIME_MODULES[name][1]
    record: dict[str, Any] = {"runtime": name, "runtime_package": package,
                              "runtime_version": metadata.version(package), "threads": threads,
                              "delegate": manifest.get("delegate"),
                              "precision": manifest.get("precision"),
                              "numpy_version": metadata.version("numpy")}
    if name == "executorch":
        record["threadpool_threads"] = _executorch_threads(threads)
    if name == "openvino":
        core = runtime.Core()
        record["runtime_version"] = runtime.get_version()
        record["cpu_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        # The precision the plugin reports under our settings, not the one asked for.
        core.set_property("CPU", _openvino_config(threads))
        hint = core.get_property("CPU", "INFERENCE_PRECISION_HINT")  # an ov.Type: 'f32'
        used = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        record["precision"] = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(used, used)
    if name == "onnxruntime":
        record.update(ort_runner.ort_provenance(threads, "all"))
    return record


def measure_kit(directory: str | Path, out: str | Path, *, threads: int = 1, seed: int = 0,
                **timing: Any) -> Path:
    """Time every unit and empty model of a kit with its runtime; write the CSV to ``out``."""
    directory = Path(directory)
    manifest = load_kit(directory)
    runtime = import_runtime(manifest, directory / ort_runner.MANIFEST_NAME)
    opener = OPENERS[manifest["runtime"]]

    def open_op(op: dict[str, Any]) -> Call:
        return opener(runtime, directory / op["file"], op["input_shape"], threads, seed)

    record = runtime_record(manifest, runtime, threads)
    record["kit"] = {k: v for k, v in manifest.items() if k != "ops"}
    return ort_runner.measure_manifest(directory, out, threads=threads, seed=seed,
                                       manifest=manifest, open_op=open_op, runtime_record=record,
                                       runner_format=RUNNER_FORMAT, **timing)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kit_runner.py",
        description="Time the units of a 'nas-lut export-ops --backend' kit with the runtime "
                    "its manifest names and write a CSV for 'nas-lut import'.")
    ort_runner.add_timing_options(parser)
    args = parser.parse_args(argv)
    return ort_runner.run_cli(parser.prog, lambda: measure_kit(
        args.manifest_dir, args.out, **ort_runner.timing_options(args)))


if __name__ == "__main__":
    sys.exit(main())
