"""`mirrornet inspect`: layers, shapes, FLOPs, params and candidate taps of an ONNX model."""
from __future__ import annotations

import json

import click

from ._common import input_shape_option


def _fmt_count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _table(headers, rows, align) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def render_text(path, summary, taps) -> str:
    """The human-readable report of ``mirrornet inspect``."""
    out = [f"model  {path}",
           f"input  {summary.input_name} {list(summary.input_shape)} float32   output  {summary.output_name}",
           "", "layers"]
    rows = [(r.index, r.name, r.op, "x".join(map(str, r.shape)), _fmt_count(r.flops), _fmt_count(r.params))
            for r in summary.rows]
    out.append(_table(["#", "name", "op", "output", "FLOPs", "params"], rows, "><<<>>"))
    out += ["", f"total  {_fmt_count(summary.total_flops)} FLOPs ({summary.total_flops:,}), "
                f"{_fmt_count(summary.total_macs)} MACs, {summary.total_params:,} params",
            f"       ({summary.flops_note})", "", "candidate taps"]
    if taps:
        total = max(summary.total_flops, 1)
        trows = [(t.name, t.tensor, "x".join(map(str, t.shape)), f"{t.bytes / 1024:.1f}",
                  f"{100 * t.flops_before / total:.1f}%", f"{t.params_before:,}", f"{t.params_after:,}")
                 for t in taps]
        out.append(_table(["tap", "tensor", "shape", "KiB", "FLOPs before", "params before", "params after"],
                          trows, "<<<>>>>"))
    else:
        out.append("(none: no activation, pooling or residual Add is a cut point of this graph)")
    return "\n".join(out)


@click.command("inspect")
@click.argument("model", metavar="MODEL.onnx")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@input_shape_option
def inspect(model, as_json, input_shape):
    """Layers, shapes, FLOPs, params and candidate taps of an ONNX model.

    The model needs one float32 image input [1, C, H, W] (a dynamic batch is fixed to 1; give other
    dynamic sizes with --input-shape) and only supported ops (shape computations fold to constants,
    Dropout is removed).
    Taps are cut points after an activation, a pooling or a residual Add, named b<k>_<op>.
    """
    from ..analysis import as_graph, candidate_taps, model_summary
    from ..frontend import load_model

    graph = as_graph(load_model(model, input_shape))  # the backbone part of a combined model
    summary = model_summary(graph)
    taps = candidate_taps(graph)
    if as_json:
        doc = {"model": str(model), **summary.to_dict(), "num_classes": graph.num_classes,
               "taps": [t.to_dict() for t in taps]}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_text(model, summary, taps))
