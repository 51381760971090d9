"""Files a run leaves in its output directory, each written atomically (temp file + rename)
so a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

HELDOUT_FILE = "heldout.jsonl"
TRAINING_LOG = "training_log.json"
LOSS_CURVE = "loss_curve.png"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
STUDENT_LAYERS_FILE = "student_layers.json"  # which teacher layers a derived student kept
SFT_BASELINE_DIR = "sft-baseline"  # the plainly fine-tuned student trained beside a distilled one


def write_text_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)
    return path


def write_json(path: Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_heldout(out_dir: Path, rows: list[dict]) -> Path:
    return write_text_atomic(out_dir / HELDOUT_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_heldout(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / HELDOUT_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_training_log(out_dir: Path) -> dict | None:
    path = Path(out_dir) / TRAINING_LOG
    return json.loads(path.read_text()) if path.is_file() else None


def plot_loss(log_history: list[dict], path: Path) -> Path | None:
    """The training loss per step as a PNG, with the held-out loss (eval_loss) when there is one.
    When distilling, CE, the divergence and the hidden-state term get panels of their own: they
    live on different scales."""
    def points(name: str) -> list[tuple[int, float]]:
        return [(e["step"], e[name]) for e in log_history if name in e and "step" in e]

    panels = [("loss", [("train", points("loss")), ("held-out", points("eval_loss"))]),
              ("CE (hard labels)", [("train", points("ce")), ("held-out", points("eval_ce"))]),
              ("divergence (kl)", [("train", points("kl")), ("held-out", points("eval_kl"))]),
              ("hidden-state loss", [("train", points("hidden"))])]
    panels = [(title, [(label, p) for label, p in lines if p]) for title, lines in panels]
    panels = [(title, lines) for title, lines in panels if lines]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels) + 0.6), sharex=True, squeeze=False)
    for ax, (title, lines) in zip(axes[:, 0], panels):
        for label, series in lines:
            style = {"marker": "o"} if label == "held-out" else {}
            ax.plot([s for s, _ in series], [v for _, v in series], label=label, **style)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the lines, never on them
    axes[-1, 0].set_xlabel("optimizer step")
    axes[0, 0].set_title("Training loss")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")  # keeps the legends beside the panels
    plt.close(fig)
    os.replace(tmp, path)
    return path


def read_student_layers(out_dir: Path) -> list[int] | None:
    path = out_dir / STUDENT_LAYERS_FILE
    return json.loads(path.read_text())["kept"] if path.is_file() else None
