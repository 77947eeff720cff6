"""The README's examples run as shown: YAML blocks load as bneck configs, Python blocks run."""

from __future__ import annotations

import re
from pathlib import Path

from nas.arch.codecs import from_yaml

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


SPACE_MARK = "# search space"


def test_every_yaml_example_is_a_valid_bneck_config() -> None:
    blocks = [text for text in _blocks("yaml") if not text.startswith(SPACE_MARK)]
    assert blocks, "the README shows a bneck YAML example"
    for number, text in enumerate(blocks, start=1):
        spec = from_yaml(text, f"README yaml block {number}")
        assert spec.blocks and spec.resolution > 0


def test_the_custom_space_example_loads_and_runs_a_search(tmp_path: Path) -> None:
    """The README's search-space YAML is a valid space, and the main job runs on it as shown."""
    import random

    import yaml

    import nas
    from nas.arch.space import space_from_dict

    spaces = [text for text in _blocks("yaml") if text.startswith(SPACE_MARK)]
    assert len(spaces) == 1, "the README shows one worked search space"
    document = yaml.safe_load(spaces[0])
    space = space_from_dict(document, "README search space")
    assert space.base.num_classes == 10 and space.kernels == (3, 5)
    assert space.params_of(space.sample(random.Random(0)))  # a sample is a point of the space
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / f"{document['name']}.yaml").write_text(spaces[0])
    study = nas.run_search(tmp_path / "run", overrides=[
        f"hydra.searchpath=[file://{tmp_path}]", f"space={document['name']}",
        "latency.measure_missing=true", "trials=2", "data=synthetic", "evaluator=proxy",
        "data.train_samples=256",
        "data.val_samples=128", "evaluator.train.epochs=1"])
    assert study.user_attrs["context"]["space"] == "small_k35_cifar"
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2


def test_every_command_in_a_bash_block_is_a_known_program() -> None:
    import tomllib

    scripts = set(tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["scripts"])
    known = scripts | {"pip", "pytest", "python", "torchrun", "createdb", "bash"}
    for text in _blocks("bash"):
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith(("-", "\\")) and not line.endswith("\\\\"):
                assert line.split()[0] in known, line


def test_every_python_example_runs(monkeypatch, capsys) -> None:
    blocks = _blocks("python")
    assert blocks, "the README shows a Python example"
    monkeypatch.chdir(README.parent)  # the examples use paths relative to the checkout
    namespace: dict = {}
    for number, text in enumerate(blocks, start=1):
        namespace = {"__name__": "readme"}
        exec(compile(text, f"README python block {number}", "exec"), namespace)
    assert " ms" in capsys.readouterr().out
    study = namespace["study"]  # the example's two-trial search ran to its budget
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2
