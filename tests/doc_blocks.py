"""The code blocks of the README and the docs pages, and the check every shown command passes.

Used by ``tests/test_readme.py`` and ``tests/test_docs.py``. A fenced block is one of

* ``python``: run (``exec``) from the repository root;
* ``yaml``: a bneck config, or a search space when its first line is ``# search space``;
* ``bash``: commands; every program is a known one, the argparse tools parse their arguments,
  the Hydra apps compose their overrides, ``python -m experiments.<name>`` names a module;
* ``text`` or no language: output, diagrams and file trees, not run.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SPACE_MARK = "# search space"
LANGUAGES = {"python", "yaml", "bash", "text", ""}

_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$",
                    flags=re.M | re.S)

#: The console scripts (pyproject.toml) and the other programs the docs may show.
SCRIPTS = dict(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
KNOWN = set(SCRIPTS) | {"pip", "pytest", "python", "torchrun", "createdb", "bash", "mkdocs"}
#: The Hydra apps and their primary config (``nas/conf/<name>.yaml``).
HYDRA_APPS = {"nas-search": "search", "nas-netadapt": "netadapt", "nas-ablate": "ablate"}
_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", ">&", "2>", "2>&1"}
_REDIRECTS = {">", ">>", "<", ">&"}


def doc_pages() -> list[Path]:
    """Every Markdown page of the site, and RESULTS.md (shown in it)."""
    return sorted(DOCS.rglob("*.md")) + [REPO / "RESULTS.md"]


def blocks(path: Path, language: str | None = None) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block of ``path`` (of one language if given)."""
    found = []
    for match in _FENCE.finditer(path.read_text(encoding="utf-8")):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        if language is None or match["lang"] == language:
            found.append((match["lang"], body))
    return found


def commands(script: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments, redirections,
    pipes and leading ``VAR=value`` assignments removed; one argv per command."""
    argvs: list[list[str]] = []
    text = script.replace("\\\n", " ")
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        skip_next = False
        for token in lexer:
            if skip_next:
                skip_next = False
            elif token in _OPERATORS or token.startswith("2>"):
                skip_next = token in _REDIRECTS or token == "2>"
                if current:
                    argvs.append(current)
                current = []
            elif not current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token):
                continue  # an environment assignment before the program
            else:
                current.append(token)
        if current:
            argvs.append(current)
    return argvs


def _parse_argparse(module_name: str, args: list[str], shown: str) -> None:
    module = importlib.import_module(module_name)
    build_parser = getattr(module, "build_parser", None)
    if build_parser is None:
        return
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{shown}: the command's arguments do not parse (exit {exc.code})") from None


def _compose(config_name: str, overrides: list[str], shown: str) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "nas" / "conf"), version_base="1.3"):
        try:
            compose(config_name=config_name, overrides=overrides)
        except Exception as exc:  # noqa: BLE001: any composition error is the doc's error
            raise AssertionError(f"{shown}: overrides {overrides} do not compose: {exc}") from None


def _check_hydra(program: str, args: list[str], shown: str) -> None:
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    for override in overrides:
        assert "=" in override, f"{shown}: {override!r} is not a Hydra override"
    if any(o.startswith("hydra.searchpath=") for o in overrides):
        return  # a user's own config folder (the search-space page's example is run by a test)
    overrides = [o for o in overrides if not o.startswith(("hydra.", "'hydra."))]
    sweeps = [[o] for o in overrides]
    if multirun:  # key=a,b,c sweeps: compose each value
        sweeps = [[f"{o.split('=', 1)[0]}={v}" for v in o.split("=", 1)[1].split(",")]
                  if "[" not in o else [o] for o in overrides]
    choices = [[]]
    for options in sweeps:
        choices = [chosen + [option] for chosen in choices for option in options]
    for chosen in choices:
        _compose(HYDRA_APPS[program], chosen, shown)


def check_command(argv: list[str]) -> None:
    """Fail with the command when ``argv`` is not a command this project can run as shown."""
    shown = " ".join(argv)
    program, args = argv[0], argv[1:]
    assert program in KNOWN, f"{shown}: {program!r} is not a known program"
    if program in HYDRA_APPS:
        _check_hydra(program, args, shown)
    elif program in SCRIPTS:
        _parse_argparse(SCRIPTS[program].split(":")[0], args, shown)
    elif program in ("python", "torchrun") and "-m" in args:
        module = args[args.index("-m") + 1]
        rest = args[args.index("-m") + 2:]
        if module.startswith("experiments."):
            name = module.split(".", 1)[1].replace(".", "/")
            assert (REPO / "experiments" / f"{name}.py").is_file() or \
                (REPO / "experiments" / name / "__main__.py").is_file(), f"{shown}: no module {module}"
        elif module.startswith("nas.cli."):
            apps = [name for name in HYDRA_APPS if SCRIPTS[name].split(":")[0] == module]
            if apps:  # a Hydra app started as a module (torchrun -m nas.cli.search ...)
                _check_hydra(apps[0], rest, shown)
            else:
                _parse_argparse(module, rest, shown)
        else:
            assert importlib.util.find_spec(module) is not None, f"{shown}: no module {module}"
