"""What a study's values mean, stored on the study so nothing else is mixed into it.

A trial's (top-1, latency) pair means something only under the settings that produced it:
the search space, the evaluator and its protocol, the data and the split candidates are ranked
on (``selection``), the latency table (its runtime, host, calibration and the figures of the
space's keys), the objectives and the mode. They are stored on the study when it is created
(the ``fingerprint`` study attribute); a resume or a worker joining with any of them changed
is refused with one line per difference, before it runs a trial. A front that mixes two
latency tables or two training schedules would rank networks by the difference of the settings
rather than of the networks.

Settings that only say how the work is done may change between starts (:data:`MAY_CHANGE`).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Mapping

from nas.errors import NASError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from nas.cost.lut import LatencyTable
    from nas.arch.space import SearchSpace

FINGERPRINT_ATTR = "fingerprint"

# How the work is done, not what the values mean: these may differ between starts and workers.
MAY_CHANGE: tuple[str, ...] = (
    "trials", "n_workers", "threads", "heartbeat_interval", "resume", "storage", "study_name",
    "seed", "sampler", "profile_costs",
    "latency.table", "latency.measure_missing", "latency.strict",
    "data.root", "data.num_workers", "data.cache_dir",
    "evaluator.cache", "evaluator.device", "evaluator.cache_batches", "evaluator.channels_last",
    "evaluator.train.device", "evaluator.train.progress", "evaluator.train.checkpoint_every",
    "evaluator.train.channels_last",
)
# The groups and keys of the configuration whose values define the study.
_DEFINING = ("space", "data", "evaluator", "mode", "budget_ms", "target_ms", "reward_exponent",
             "selection", "latency.runtime", "latency.resolution")
# What a study stored before a defining setting existed was made with: such a study ranked its
# candidates on val, so it resumes with selection=val and refuses selection=holdout.
_BEFORE_THE_SETTING: dict[str, str] = {"selection": json.dumps("val"),
                                       "evaluator.train.batchnorm_slices": json.dumps(1)}
# Settings no longer in the configuration, with the value whose meaning a current setting
# keeps: stored with that value they are no difference (global_batchnorm=true is
# batchnorm_slices=1); stored with another, the study refuses to resume.
_RETIRED: dict[str, str] = {"evaluator.train.global_batchnorm": json.dumps(True)}


class StudySettingsMismatch(NASError, ValueError):
    """A resume or a joining worker has settings that differ from the study's."""


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    elif prefix not in MAY_CHANGE:
        out[prefix] = json.dumps(value, sort_keys=True, default=str)


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def table_identity(table: LatencyTable, space: SearchSpace) -> dict[str, str]:
    """The latency table as far as this study's values depend on it."""
    from nas.cost.keys import keys_for_space

    provenance = table.provenance
    figures = "\n".join(f"{key}={table.ms(key):.6g}" for key in sorted(keys_for_space(space))
                        if key in table)
    calibration = provenance.get("calibration") or {}
    return {
        "latency.table.runtime": f"{provenance.get('runtime')} {provenance.get('runtime_version', '')}".strip(),
        "latency.table.device": str(provenance.get("device", "")),
        "latency.table.threads_batch_dtype": (f"{provenance.get('threads')} thread(s), batch "
                                              f"{provenance.get('batch')}, {provenance.get('dtype')}"),
        "latency.table.calibration": (f"a={calibration['a']:.6g} b={calibration['b']:.6g}"
                                      if calibration else "none"),
        "latency.table.figures": "sha256:" + hashlib.sha256(figures.encode()).hexdigest()[:16],
    }


def study_fingerprint(cfg: Mapping[str, Any], table: LatencyTable, space: SearchSpace) -> dict[str, str]:
    """Every defining setting of the run configured by ``cfg``, flattened to strings."""
    out: dict[str, str] = {}
    for name in _DEFINING:
        _flatten(_lookup(cfg, name), name, out)
    out.update(table_identity(table, space))
    return out


def differences(stored: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """One line per setting whose value differs: ``name: study X, this start Y``."""
    lines = []
    for key in sorted(set(stored) | set(current)):
        was, now = stored.get(key, "(not set)"), current.get(key, "(not set)")
        if was != now:
            lines.append(f"{key}: the study has {_short(was)}, this start {_short(now)}")
    return lines


def _short(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _without_retired(settings: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in settings.items() if _RETIRED.get(key) != value}


def check_or_store(study: optuna.Study, fingerprint: dict[str, str]) -> None:
    """Store ``fingerprint`` on a study that has none; refuse one that differs.

    Two starts that reach an empty study at the same moment both store theirs; reading it
    back afterwards makes the one whose settings lost refuse too.
    """
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
        stored = study.user_attrs.get(FINGERPRINT_ATTR)  # re-read: another start may have won
    before = {key: value for key, value in _BEFORE_THE_SETTING.items() if key in fingerprint}
    lines = differences(_without_retired({**before, **stored}), _without_retired(fingerprint))
    if lines:
        raise StudySettingsMismatch(
            f"study {study.study_name!r} was created with other settings; its trials would be "
            f"mixed with results that mean something else. Differences: {'; '.join(lines)}. "
            "Start a new study (another study_name or run folder) or use the study's settings "
            f"(these may change between starts: {', '.join(MAY_CHANGE)})")


__all__ = ["FINGERPRINT_ATTR", "MAY_CHANGE", "StudySettingsMismatch", "check_or_store",
           "differences", "study_fingerprint", "table_identity"]
