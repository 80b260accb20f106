"""Writing estimates down: the ranked list as JSON and the Pareto front as a plot."""
from __future__ import annotations

from pathlib import Path

from ..util import atomic_path, write_json


def write_json_report(path, estimates, *, selected=None, front=None, emulator=None, budget_bytes=None) -> Path:
    """Every estimate (in the given order), the selection and the Pareto front, atomically."""
    return write_json(path, {
        "generated_by": "mirrornet_tvm.emulator (Performance Emulator)",
        "emulator": emulator.describe() if emulator is not None else None,
        "budget_bytes": budget_bytes,
        "selected": selected.name if selected is not None else None,
        "pareto_front": [e.name for e in front] if front is not None else None,
        "estimates": [e.to_dict() for e in estimates],
    })


def write_ranking_json(path, ranking, *, model: str | None = None, generated_by: str = "mirrornet strategies") -> Path:
    """A :class:`~.selection.Ranking` (every estimate, the front, the floors and the pick), atomically."""
    return write_json(path, {"generated_by": f"{generated_by} (Performance Emulator) from {model or 'a model'}",
                             "model": model, **ranking.to_dict()})


def plot_pareto(path, estimates, front, *, selected=None, title: str = "") -> Path:
    """Predicted latency against secure memory, the Pareto front drawn through, as PNG/PDF/SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([e.secure_bytes / 1024 for e in estimates], [e.total_s * 1e3 for e in estimates],
               s=12, color="0.65", label=f"strategies ({len(estimates)})")
    pts = sorted(front, key=lambda e: e.secure_bytes)
    ax.plot([e.secure_bytes / 1024 for e in pts], [e.total_s * 1e3 for e in pts], "o-", color="tab:blue",
            markersize=5, label=f"Pareto front ({len(pts)})")
    if selected is not None:
        ax.scatter([selected.secure_bytes / 1024], [selected.total_s * 1e3], s=90, marker="*",
                   color="tab:red", zorder=5, label=f"selected: {selected.name}")
    ax.set_xlabel("secure memory (KiB): CPM weights + arena + tap buffers")
    ax.set_ylabel("predicted latency per inference (ms)")
    ax.set_title(title or "MirrorNet strategies: predicted latency vs secure memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png",
                    metadata={"Creator": "mirrornet_tvm.emulator.report.plot_pareto"} if path.suffix == ".png" else None)
    plt.close(fig)
    return path
