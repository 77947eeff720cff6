"""The paper's layer-by-layer view of a network (Table 1/2 columns), without torch."""

from __future__ import annotations

from dataclasses import dataclass

from nas.arch.spec import NetworkSpec, original_stage_projection


@dataclass(frozen=True)
class LayerRow:
    """One line of the paper's table: input size and channels, operator, exp, out, SE, NL, s."""

    in_size: int
    in_channels: int
    operator: str
    exp: int | None
    out: int
    se: bool
    nl: str | None
    stride: int

    def cells(self) -> list[str]:
        return [
            f"{self.in_size}^2 x {self.in_channels}",
            self.operator,
            "-" if self.exp is None else str(self.exp),
            str(self.out),
            "SE" if self.se else "-",
            self.nl or "-",
            str(self.stride),
        ]


TABLE_HEADER = ["Input", "Operator", "exp size", "#out", "SE", "NL", "s"]


def paper_rows(spec: NetworkSpec) -> list[LayerRow]:
    """The rows of the paper's Table 1/2 for ``spec`` (resolved to concrete channels)."""
    spec = spec.resolved()
    rows = [LayerRow(spec.resolution, 3, "conv2d, 3x3", None, spec.stem_channels, False,
                     spec.stem_activation, 2)]
    for ctx in spec.contexts():
        b = ctx.block
        op = f"bneck, {b.kernel}x{b.kernel}" + (f", d{b.dilation}" if b.dilation > 1 else "")
        rows.append(LayerRow(ctx.in_resolution, ctx.in_channels, op, b.expansion, b.out, b.se,
                             b.activation, b.stride))
    size, last_out, act = spec.final_resolution, spec.blocks[-1].out, spec.head_activation
    if spec.last_stage in ("efficient", "mobilenetv2"):
        rows += [
            LayerRow(size, last_out, "conv2d, 1x1", None, spec.last_conv, False, act, 1),
            LayerRow(size, spec.last_conv, f"pool, {size}x{size}", None, spec.last_conv, False, None, 1),
        ]
        if spec.last_stage == "efficient":
            rows.append(LayerRow(1, spec.last_conv, "conv2d 1x1, NBN", None, spec.head_features,
                                 False, act, 1))
    else:
        project = original_stage_projection(spec)
        rows += [
            LayerRow(size, last_out, "bneck, 3x3 (original last stage)", spec.last_conv, project,
                     False, act, 1),
            LayerRow(size, project, "conv2d, 1x1", None, spec.head_features, False, act, 1),
            LayerRow(size, spec.head_features, f"pool, {size}x{size}", None, spec.head_features,
                     False, None, 1),
        ]
    rows.append(LayerRow(1, spec.head_features, "conv2d 1x1, NBN", None, spec.num_classes, False,
                         None, 1))
    return rows


def format_table(rows: list[LayerRow]) -> str:
    """Plain-text table with aligned columns."""
    cells = [TABLE_HEADER] + [r.cells() for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(TABLE_HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
