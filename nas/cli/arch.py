"""``nas-arch``: show, export and convert bneck configs.

    nas-arch show large
    nas-arch export path/to/bneck.yaml --onnx net.onnx
    nas-arch convert small --to timm
    nas-arch convert small --to timm-python > small_timm.py   # builds it with timm's builder
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nas.arch.codecs import load_spec, to_string, to_yaml
from nas.arch.convert import to_timm, to_torchvision
from nas.arch.spec import NetworkSpec, SpecError
from nas.models.layers import format_table, paper_rows


def _timm_python(spec: NetworkSpec) -> str:
    from nas.models.timm_interop import to_timm_python  # imports torch: only when asked

    return to_timm_python(spec)


CONVERTERS = {
    "yaml": to_yaml,
    "string": lambda spec: to_string(spec) + "\n",
    "timm": lambda spec: json.dumps(to_timm(spec), indent=2) + "\n",
    "timm-python": _timm_python,
    "torchvision": to_torchvision,
}


def _show(args: argparse.Namespace) -> None:
    from nas.cost.profile import profile_spec

    spec = load_spec(args.arch)
    prof = profile_spec(spec)
    title = spec.name or str(args.arch)
    print(f"{title}  (input {spec.resolution}x{spec.resolution}, width x{spec.width_mult} "
          f"{spec.width_convention}, last stage {spec.last_stage})")
    print(format_table(paper_rows(spec)))
    print(f"MAdds: {prof.madds_m:.1f}M (conv + linear, fvcore)   params: {prof.params:,} "
          f"({prof.params_m:.2f}M)")


def _export(args: argparse.Namespace) -> None:
    import torch

    from nas.models.builder import build_model
    from nas.models.export import compare_with_onnxruntime, export_module, onnx_op_counts, onnx_opset

    spec = load_spec(args.arch)
    model = build_model(spec).eval()
    example = torch.randn(args.batch, 3, spec.resolution, spec.resolution)
    path = export_module(model, example, args.onnx, opset=args.opset,
                         external_data=args.external_data, dynamic_batch=True)
    # The batch axis is dynamic: check the file at the example's batch and at another one.
    other = torch.randn(args.batch + 3, 3, spec.resolution, spec.resolution)
    diff = max(compare_with_onnxruntime(model, path, example), compare_with_onnxruntime(model, path, other))
    ops = onnx_op_counts(path)
    print(f"wrote {path} (opset {onnx_opset(path)}, {ops.get('HardSwish', 0)} HardSwish nodes, "
          f"dynamic batch axis); onnxruntime max abs diff {diff:.2e} at batch {args.batch} and "
          f"{args.batch + 3}")


def _convert(args: argparse.Namespace) -> None:
    sys.stdout.write(CONVERTERS[args.to](load_spec(args.arch)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-arch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    arch_help = "a canonical name (large, small, large_reduced_tail, ...) or a bneck YAML file"
    show = sub.add_parser("show", help="print the paper-style table with MAdds and params")
    show.add_argument("arch", help=arch_help)
    show.set_defaults(func=_show)
    export = sub.add_parser("export", help="export to ONNX and check it against onnxruntime")
    export.add_argument("arch", help=arch_help)
    export.add_argument("--onnx", required=True, type=Path, help="output .onnx file")
    export.add_argument("--batch", type=int, default=1)
    export.add_argument("--opset", type=int, default=None, help="default: the exporter's (18+)")
    export.add_argument("--external-data", action="store_true",
                        help="store weights in a side file instead of one self-contained file")
    export.set_defaults(func=_export)
    convert = sub.add_parser("convert", help="print the config in another format")
    convert.add_argument("arch", help=arch_help)
    convert.add_argument("--to", required=True, choices=sorted(CONVERTERS))
    convert.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SpecError as err:
        print(f"nas-arch: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
