"""Host networks for measuring keys in context: a small network per key, or ordinary
members of a space that cover every key a given number of times."""

from __future__ import annotations

import random
from typing import Iterable

from nas.arch.spec import BlockSpec, NetworkSpec, conv_output_size
from nas.cost.keys import bneck_key, keys_for_space, parse_key, spec_key_tuple


# ---------------------------------------------------------------------------- host networks
def synthetic_host(key: str) -> NetworkSpec:
    """A small network in which ``key`` occurs (stem -> op -> head), for keys no space covers."""
    f = parse_key(key)
    # The key's network-wide settings (SE width and gate, h-swish form) hold for the host too.
    opts = {"se_ratio": f.options.se_ratio, "se_gate": f.options.se_gate, "hswish": f.options.hswish}
    if f.op == "stem":
        return NetworkSpec(**opts, blocks=(BlockSpec(3, f.out, f.out, False, "RE", 1),),
                           stem_channels=f.out, stem_activation=f.act, resolution=f.in_res)
    if f.op == "bneck":
        block = BlockSpec(kernel=f.kernel, expansion=f.exp, out=f.out, se=f.se, activation=f.act,
                          stride=f.stride, dilation=f.dilation)
        return NetworkSpec(**opts, blocks=(block,), stem_channels=f.in_ch, resolution=2 * f.in_res)
    filler = BlockSpec(3, f.in_ch, f.in_ch, False, "RE", 1)
    if f.op == "lastconv":
        return NetworkSpec(**opts, blocks=(filler,), stem_channels=f.in_ch, resolution=2 * f.in_res,
                           last_conv=f.out, head_activation=f.act)
    if f.op == "pool":
        filler = BlockSpec(3, 16, 16, False, "RE", 1)
        return NetworkSpec(**opts, blocks=(filler,), stem_channels=16, resolution=2 * f.in_res,
                           last_conv=f.in_ch)
    # head: the pooled features come from a 7x7 map as in the canonical networks.
    filler = BlockSpec(3, 16, 16, False, "RE", 1)
    if f.exp:
        return NetworkSpec(**opts, blocks=(filler,), stem_channels=16, resolution=14, last_conv=f.in_ch,
                           head_features=f.exp, num_classes=f.out, head_activation=f.act)
    return NetworkSpec(**opts, blocks=(filler,), stem_channels=16, resolution=14, last_stage="original",
                       last_conv=96, head_features=f.in_ch, num_classes=f.out)


def cover_hosts(space, wanted: Iterable[str], per_key: int, seed: int = 0) -> list[NetworkSpec]:
    """Networks of ``space`` in which every wanted key occurs ``per_key`` times at least.

    Each host draws its stage depths at random and gives every block the candidate whose
    key has been seen least so far (ties broken at random), so the hosts are ordinary
    members of the space and each key meets many different neighbours.
    """
    rng = random.Random(seed)
    base = space.base.resolved()
    wanted = set(wanted) & set(keys_for_space(space))
    counts = {k: 0 for k in wanted}
    hosts: list[NetworkSpec] = []
    guard = 0
    while any(c < per_key for c in counts.values()):
        guard += 1
        if guard > 100000:  # pragma: no cover - every key of the space is reachable
            raise RuntimeError("cover_hosts did not converge")
        blocks: list[BlockSpec] = []
        channels = base.stem_channels
        size = conv_output_size(base.resolution, 2)
        useful = False
        for stage in space.stages:
            depth = rng.choice(stage.depths)
            for b in range(depth):
                stride = stage.stride if b == 0 else 1
                candidates = [
                    BlockSpec(kernel=k, expansion=e, out=stage.out, se=se, activation=a, stride=stride)
                    for k in space.kernels for e in stage.expansions
                    for se in space.se for a in space.activations
                ]
                keyed = [(counts.get(bneck_key(size, channels, c, base.options), per_key), rng.random(), i)
                         for i, c in enumerate(candidates)]
                _, _, best = min(keyed)
                block = candidates[best]
                key = bneck_key(size, channels, block, base.options)
                if key in counts:
                    useful = useful or counts[key] < per_key
                    counts[key] += 1
                blocks.append(block)
                channels, size = block.out, conv_output_size(size, stride)
        host = base.with_blocks(blocks)
        for key in spec_key_tuple(host):
            if key in counts and not key.startswith("bneck"):
                useful = useful or counts[key] < per_key
                counts[key] += 1
        if useful:
            hosts.append(host)
    return hosts
