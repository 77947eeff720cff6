"""The README's examples run as shown: its Python block runs, its commands are known programs
whose arguments parse (``tests/doc_blocks.py``), and CI runs the set-up it shows.

The docs pages' examples: ``tests/test_docs.py``.
"""

from __future__ import annotations

from doc_blocks import REPO, blocks, check_command, commands

README = REPO / "README.md"


def test_every_command_in_a_bash_block_is_a_known_program() -> None:
    shown = [argv for _, text in blocks(README, "bash") for argv in commands(text)]
    assert shown, "the README shows commands"
    for argv in shown:
        check_command(argv)


def test_the_set_up_and_the_main_job_are_the_first_commands_and_ci_runs_them() -> None:
    shown = [" ".join(argv) for _, text in blocks(README, "bash") for argv in commands(text)]
    assert shown[:3] == ['pip install -e .[dev]', "pytest", "nas-search"]
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci and "\npytest" in ci
    assert "nas-search" in (REPO / ".ci" / "readme_commands").read_text()


def test_every_python_example_runs(monkeypatch, capsys) -> None:
    examples = blocks(README, "python")
    assert examples, "the README shows a Python example"
    monkeypatch.chdir(REPO)  # the examples use paths relative to the checkout
    namespace: dict = {}
    for number, (_, text) in enumerate(examples, start=1):
        namespace = {"__name__": "readme"}
        exec(compile(text, f"README python block {number}", "exec"), namespace)
    assert " ms" in capsys.readouterr().out
    study = namespace["study"]  # the example's two-trial search ran to its budget
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2
