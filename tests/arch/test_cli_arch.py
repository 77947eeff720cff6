from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.arch.codecs import from_string, from_yaml, load_spec
from nas.arch.convert import from_timm, from_torchvision
from nas.cli.arch import main


def test_show_prints_the_paper_table(capsys):
    assert main(["show", "large"]) == 0
    out = capsys.readouterr().out
    assert "bneck, 5x5" in out and "1^2 x 1280" in out
    assert "MAdds: 216.6M" in out and "5,483,032" in out


@pytest.mark.parametrize("fmt, parse", [
    ("yaml", from_yaml),
    ("string", from_string),
    ("timm", lambda text: from_timm(**json.loads(text))),
    ("torchvision", from_torchvision),
])
def test_convert_round_trips(fmt, parse, capsys):
    assert main(["convert", "small", "--to", fmt]) == 0
    assert parse(capsys.readouterr().out) == load_spec("small")


def test_export_writes_onnx(tmp_path: Path, capsys):
    config = tmp_path / "net.yaml"
    config.write_text(subprocess.run(
        [sys.executable, "-m", "nas.cli.arch", "convert", "small", "--to", "yaml"],
        check=True, capture_output=True, text=True).stdout.replace("resolution: 224", "resolution: 64"))
    assert main(["export", str(config), "--onnx", str(tmp_path / "net.onnx")]) == 0
    assert (tmp_path / "net.onnx").is_file()
    assert "HardSwish" in capsys.readouterr().out


BAD = {
    "stride3.yaml": ("  - [3,  16,  16,  -, RE, 1]", "  - [3,  16,  16,  -, RE, 3]", "bneck row 1: field 'stride'"),
    "zero.yaml": ("  - [3,  16,  16,  -, RE, 1]", "  - [3,  16,   0,  -, RE, 1]", "bneck row 1: field 'out'"),
    "act.yaml": ("  - [3,  16,  16,  -, RE, 1]", "  - [3,  16,  16,  -, GELU, 1]", "field 'activation'"),
    "short.yaml": ("  - [3,  16,  16,  -, RE, 1]", "  - [3,  16,  16, RE, 1]", "expected 6 or 7 entries"),
    "missing.yaml": ("num_classes: 1000\n", "", "missing field(s) ['num_classes']"),
    "notyaml.yaml": ("stem: {", "stem: {{[", "not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_configs_fail_with_one_clear_message(name, tmp_path: Path):
    old, new, message = BAD[name]
    text = (Path(__file__).resolve().parents[2] / "nas" / "arch" / "canonical" / "mobilenet_v3_large.yaml").read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    # The installed console script, from the environment running the tests.
    script = Path(sys.executable).parent / "nas-arch"
    result = subprocess.run([str(script), "show", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], result.stderr
