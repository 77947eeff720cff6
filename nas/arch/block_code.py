"""The one grammar of a bneck block as a string, shared by the one-line network spec
(:func:`nas.arch.codecs.to_string`) and the latency-table keys (:mod:`nas.cost.keys`).

In the spirit of timm's ``_decode_block_str`` (``ir_r1_k5_s2_e3_c40_se0.25_nre``), one block is
a sequence of ``_``-separated tokens, always in this order::

    k<kernel>_e<expansion>_c<out>_s<stride>[_se[<ratio>][sig]]_<act>[_d<dilation>]

* ``k5``: depthwise kernel 5 (paper Table 1, "exp size" column is ``e``);
* ``e72``: expansion channels (absolute, as the paper's tables give them, not a ratio);
* ``c40``: output channels; ``s2``: stride;
* ``_se``: squeeze-and-excite on the expansion (paper Sec. 5.3); ``_se0p5`` a squeeze ratio
  other than the default 1/4 (``p`` for the decimal point), ``sig`` a sigmoid gate instead
  of the hard sigmoid;
* ``re`` | ``hs`` | ``r6`` | ``sw``: ReLU, h-swish, ReLU6, SiLU; ``hsd``: h-swish as separate
  ops (Table 5's unfused timing);
* ``_d2``: dilation 2 (omitted for 1).

The SE ratio, gate and h-swish form are network-wide settings (:class:`~nas.arch.spec.OpOptions`):
a latency key spells them because they change an op's cost; a network string spells them
once, in its ``ops`` part, so its blocks use the default tokens only.
"""

from __future__ import annotations

import dataclasses
import re

from nas.arch.spec import DEFAULT_OPTIONS, BlockSpec, OpOptions, SpecError

ACT_TOKENS = ("re", "hs", "hsd", "r6", "sw")
_BLOCK = re.compile(
    rf"^k(?P<k>\d+)_e(?P<e>\d+)_c(?P<c>\d+)_s(?P<s>\d+)"
    rf"(?P<se>_se(?P<ratio>\d+(?:p\d+)?)?(?P<sig>sig)?)?_(?P<act>{'|'.join(ACT_TOKENS)})"
    rf"(?:_d(?P<d>\d+))?$")
EXAMPLE = "k5_e72_c40_s2_se_re"


def act_token(activation: str, options: OpOptions = DEFAULT_OPTIONS) -> str:
    """The activation's token (``hsd`` for an h-swish built from separate ops)."""
    if activation == "HS" and options.hswish == "decomposed":
        return "hsd"
    return activation.lower()


def se_token(options: OpOptions = DEFAULT_OPTIONS) -> str:
    """``_se``, with the ratio and gate when they are not the paper's."""
    ratio = "" if options.se_ratio == DEFAULT_OPTIONS.se_ratio else f"{options.se_ratio:g}".replace(".", "p")
    return "_se" + ratio + ("sig" if options.se_gate == "soft" else "")


def format_block(block: BlockSpec, options: OpOptions = DEFAULT_OPTIONS) -> str:
    """The block's code (module docstring), with ``options``' tokens."""
    code = f"k{block.kernel}_e{block.expansion}_c{block.out}_s{block.stride}"
    code += (se_token(options) if block.se else "") + f"_{act_token(block.activation, options)}"
    return code + (f"_d{block.dilation}" if block.dilation != 1 else "")


def parse_block(code: str, where: str = "block") -> tuple[BlockSpec, OpOptions]:
    """The block and the op options its tokens spell; :class:`SpecError` naming ``where``."""
    match = _BLOCK.match(code.strip())
    if not match:
        raise SpecError(f"{where}: cannot parse {code!r}; expected like {EXAMPLE!r} "
                        "(k<kernel>_e<expansion>_c<out>_s<stride>[_se]_<re|hs|hsd|r6|sw>[_d<dilation>])")
    g = match.groupdict()
    options = DEFAULT_OPTIONS
    if g["ratio"]:
        ratio = float(g["ratio"].replace("p", "."))
        if not 0 < ratio <= 1:
            raise SpecError(f"{where}: {code!r}: the SE ratio must be in (0, 1], got {ratio:g}")
        options = dataclasses.replace(options, se_ratio=ratio)
    if g["sig"]:
        options = dataclasses.replace(options, se_gate="soft")
    if g["act"] == "hsd":
        options = dataclasses.replace(options, hswish="decomposed")
    if g["se"] and g["se"] != se_token(options):  # one spelling per SE setting (not _se0p25)
        raise SpecError(f"{where}: {code!r}: write the SE part as {se_token(options)!r}")
    try:
        block = BlockSpec(kernel=int(g["k"]), expansion=int(g["e"]), out=int(g["c"]),
                          se=bool(g["se"]), activation="HS" if g["act"] == "hsd" else g["act"].upper(),
                          stride=int(g["s"]), dilation=int(g["d"] or 1))
    except SpecError as err:
        raise SpecError(f"{where} ({code!r}): {err}") from None
    return block, options


__all__ = ["ACT_TOKENS", "EXAMPLE", "act_token", "format_block", "parse_block", "se_token"]
