"""A corpus of bad inputs per family: each ends with exit code 2, one line naming what is wrong.

No traceback, and no silent acceptance: the run must stop before any work is done. (The
latency-table family lives in tests/cost/test_lut_strict.py.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nas.arch.codecs import load_spec, to_yaml

BIN = Path(sys.executable).parent
SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=180, cwd=cwd)


def _assert_clean_error(result: subprocess.CompletedProcess, *names: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for name in names:
        assert name in result.stderr, (name, result.stderr[-2000:])


SMALL = to_yaml(load_spec("small"))


@pytest.mark.parametrize("content, names", [
    (b"\xf4\x8f\x00binary\xff", ["not UTF-8"]),
    (SMALL.replace("bneck:", "bneck: [").encode(), ["not valid YAML"]),
    (SMALL.replace("resolution: 224", "resolution: 9999999").encode(), ["resolution", "<= 4096"]),
    (SMALL.replace("[3,  72, 24,", "[3,  72000000, 24,").encode(), ["bneck row 2", "expansion", "<= 16384"]),
    (SMALL.replace("num_classes: 1000\n", "").encode(), ["num_classes"]),
    (SMALL.replace("[3,  72, 24,  -, RE, 2]", "[4,  72, 24,  -, RE, 2]").encode(), ["bneck row 2", "kernel"]),
])
def test_bad_bneck_yaml(tmp_path: Path, content: bytes, names: list[str]) -> None:
    path = tmp_path / "net.yaml"
    path.write_bytes(content)
    _assert_clean_error(_run("nas-arch", "show", str(path)), str(path), *names)


@pytest.mark.parametrize("edit, names", [
    (lambda text: text + "\nstages: [oops\n", ["bad.yaml:", "not valid YAML"]),
    (lambda text: text.replace("  kernel: [3, 5, 7]", "  kernel: [3, 4]"), ["bad.yaml", "kernel"]),
])
def test_bad_search_space(tmp_path: Path, edit, names: list[str]) -> None:
    (tmp_path / "space").mkdir()
    text = (SPACES / "mobilenetv3_small.yaml").read_text()
    (tmp_path / "space" / "bad.yaml").write_text(edit(text))
    result = _run("nas-search", f"hydra.searchpath=[file://{tmp_path}]", "space=bad",
                  f"hydra.run.dir={tmp_path / 'run'}")
    _assert_clean_error(result, *names)
    assert not (tmp_path / "run" / "trials.csv").exists()


def test_missing_data_folder_is_named_before_the_study_starts(tmp_path: Path) -> None:
    result = _run("nas-search", f"data.root={tmp_path / 'no-cifar'}", f"hydra.run.dir={tmp_path / 'run'}")
    _assert_clean_error(result, f"data.root {tmp_path / 'no-cifar'}", "no such directory",
                        "data=synthetic evaluator=proxy")
    assert not (tmp_path / "run" / "study.journal").exists()


@pytest.mark.parametrize("override, names", [
    ("trials=abc", ["trials must be an integer >= 1", "'abc'"]),
    ("n_workers=0", ["n_workers must be an integer >= 1, got 0"]),
    ("threads=0", ["threads must be an integer >= 1, got 0"]),
    ("budget_ms=fast", ["budget_ms must be a number", "'fast'"]),
    ("resume=maybe", ["resume must be true or false"]),
    ("space=nope", ["Could not find 'space/nope'"]),
    ("sampler=cmaes", ["sampler must be one of"]),
])
def test_bad_search_values(tmp_path: Path, override: str, names: list[str]) -> None:
    result = _run("nas-search", override, f"hydra.run.dir={tmp_path / 'run'}")
    _assert_clean_error(result, *names)


@pytest.mark.parametrize("args, names", [
    (["small", "--threads", "0"], ["--threads must be >= 1"]),
    (["small", "--protocol", "nope"], ["unknown protocol 'nope'"]),
    (["small", "--data", "cifar10", "--root", "/nonexistent/cifar"], ["/nonexistent/cifar: no such directory"]),
    (["small", "--data", "synthetic", "--resolution", "16"], ["resolution=16 is below the network's total stride 32"]),
    (["small", "--data", "synthetic", "--epochs", "0"], ["TrainConfig.epochs must be an integer >= 1"]),
])
def test_bad_training_values(tmp_path: Path, args: list[str], names: list[str]) -> None:
    _assert_clean_error(_run("nas-train", *args, "--out", str(tmp_path / "run")), *names)


@pytest.mark.parametrize("args, names", [
    (["validate", "--table", "latency_tables/cpu-torch-1t-b1-224", "--space", "mobilenetv3_small",
      "--n", "0"], ["--n: expected an integer >= 1, got 0"]),
    (["calibrate", "--table", "latency_tables/cpu-torch-1t-b1-224", "--threads", "x"],
     ["--threads: expected an integer >= 1"]),
])
def test_bad_lut_values(args: list[str], names: list[str]) -> None:
    _assert_clean_error(_run("nas-lut", *args, cwd=Path(__file__).resolve().parents[1]), *names)


def test_a_table_from_another_host_warns_and_strict_refuses(tmp_path: Path) -> None:
    import json

    table = tmp_path / "other-host"
    shutil.copytree(Path(__file__).resolve().parents[1] / "latency_tables" / "cpu-torch-1t-b1-224", table)
    provenance = json.loads((table / "provenance.json").read_text())
    provenance["device"] = provenance["host"]["cpu_model"] = "Imaginary CPU 9000"
    (table / "provenance.json").write_text(json.dumps(provenance))
    result = _run("nas-search", f"latency.table={table}", "latency.backend=torch", "latency.strict=true", "trials=1",
                  "data=synthetic", "evaluator=proxy",
                  f"hydra.run.dir={tmp_path / 'run'}")
    _assert_clean_error(result, "Imaginary CPU 9000", "another host")
    assert not (tmp_path / "run" / "trials.csv").exists()
