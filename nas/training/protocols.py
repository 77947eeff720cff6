"""Named training protocols: a data config plus a training config, read from YAML.

Three ship with the project (``nas/conf/protocol/``): ``proxy``, the cheap accuracy objective
of the search; ``reference``, the longer protocol behind final figures and the ranking the
proxy and the supernet are judged against; and ``proxy_b256``, the proxy before, kept because
the ablation studies' accuracy was measured with it (a shipped protocol's relative ``root``
is relative to the project checkout). A protocol file holds a ``data:`` mapping
(:class:`nas.training.data_config.DataConfig` fields) and a ``train:`` mapping
(:class:`nas.training.train_config.TrainConfig` fields); any file in that format can be named by path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas.config import ConfigError
from nas.training.data_config import DataConfig
from nas.training.train_config import TrainConfig

PROTOCOL_DIR = Path(__file__).resolve().parents[1] / "conf" / "protocol"
# A shipped protocol's relative data root is relative to the project checkout (where
# ``../shared`` lies beside it), so the commands work from any folder.
CHECKOUT = PROTOCOL_DIR.parents[2]


@dataclass(frozen=True)
class Protocol:
    """A named (data, training) pair; ``source`` is the file it was read from."""

    name: str
    data: DataConfig
    train: TrainConfig
    source: str

    def settings(self) -> dict[str, Any]:
        """The result-changing settings (what a cache of its results is keyed by)."""
        return {"data": self.data.settings(), "train": self.train.settings()}

    def key(self) -> str:
        """A short hash of :meth:`settings` without the data root's spelling: results
        obtained under one protocol are found again by it, and never mixed with another's."""
        settings = self.settings()
        settings["data"].pop("root", None)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def protocol_names() -> list[str]:
    """The shipped protocols."""
    return sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))


def protocol_path(name_or_path: str | Path) -> Path:
    """The file of a shipped protocol name, or the given YAML path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{path}: no such protocol file")
        return path
    path = PROTOCOL_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown protocol {text!r}; shipped protocols: {protocol_names()} "
                          "(or give a YAML file with data: and train: mappings)")
    return path


def load_protocol(name_or_path: str | Path, *, data: dict[str, Any] | None = None,
                  train: dict[str, Any] | None = None) -> Protocol:
    """Read a protocol; ``data``/``train`` override fields (e.g. ``{"root": ...}``)."""
    path = protocol_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict) or set(raw) != {"data", "train"}:
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(f"{path}: a protocol has exactly two mappings, data: and train:; got {keys}")
    for part in ("data", "train"):
        if not isinstance(raw[part], dict):
            raise ConfigError(f"{path}: {part}: must be a mapping of fields")
    data_fields = dict(raw["data"])
    root = data_fields.get("root")
    if path.parent == PROTOCOL_DIR and isinstance(root, str) and not Path(root).is_absolute():
        data_fields["root"] = str((CHECKOUT / root).resolve())
    try:
        data_cfg = DataConfig.from_dict({**data_fields, **(data or {})})
        train_cfg = TrainConfig.from_dict({**raw["train"], **(train or {})})
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return Protocol(name=path.stem, data=data_cfg, train=train_cfg, source=str(path))


def with_fields(protocol: Protocol, *, data: dict[str, Any] | None = None,
                train: dict[str, Any] | None = None, name: str | None = None) -> Protocol:
    """A copy of ``protocol`` with some fields replaced (validated again)."""
    return Protocol(name=name or protocol.name,
                    data=DataConfig.from_dict({**protocol.data.to_dict(), **(data or {})}),
                    train=TrainConfig.from_dict({**protocol.train.to_dict(), **(train or {})}),
                    source=protocol.source)


__all__ = ["PROTOCOL_DIR", "Protocol", "load_protocol", "protocol_names", "protocol_path",
           "with_fields"]
