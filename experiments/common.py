"""Shared helpers of the experiment scripts: atomic JSON results, training-curve plots."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

_logger = logging.getLogger(__name__)


def load_json(path):
    path = Path(path)
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def load_results(path, settings, merge_dirs=()):
    """The results JSON at ``path`` if it was made with ``settings`` (else a fresh one: other settings start over),
    with the runs of the folders ``merge_dirs`` folded in (see ``merge_results``)."""
    path = Path(path)
    results = load_json(path) or {}
    if results.get("settings") != settings:
        results = {"settings": settings, "runs": {}}
    return merge_results(results, merge_dirs, path.name, settings)


def merge_results(results, dirs, filename, settings):
    """Fold the runs of other results folders (e.g. seeds run side by side on several GPUs) into ``results``.

    Every folder's ``filename`` must hold results made with ``settings``; runs already in ``results`` win. Keys other
    than ``runs`` that ``results`` lacks (calibration, GPU name, ...) are taken from the first folder that has them."""
    for d in dirs:
        other = load_json(Path(d) / filename)
        if other is None:
            raise SystemExit(f"--merge: {Path(d) / filename} does not exist")
        if other.get("settings") != settings:
            raise SystemExit(f"--merge: {Path(d) / filename} was made with other settings: {other.get('settings')} "
                             f"(this run: {settings})")
        for key, run in other["runs"].items():
            results["runs"].setdefault(key, run)
        for key, value in other.items():
            if key not in ("runs", "table", "wall_s"):
                results.setdefault(key, value)
    return results


def _next(counters, key):
    """0, 1, 2, ... on successive calls with the same key."""
    counters[key] = counters.get(key, -1) + 1
    return counters[key]


def _publish(tmp, path):
    """Give the temporary file the usual permissions (mkstemp makes it 0600), then move it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_json(path, obj):
    """Write ``obj`` to ``path`` through a temporary file and ``os.replace`` (never a half-written results file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
        _publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plot_curves(results, path, x, y, loss, title, y_label="test top-1 (%)", loss_label="train loss", bars=None,
                bar_label=""):
    """One line per run: ``y`` and ``loss`` of each run's ``history`` against ``x``; with ``bars`` ({name: value})
    a third panel of bars (e.g. the time ratio). Needs matplotlib (skipped with a warning without it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.warning("matplotlib is not installed: %s not written", path)
        return None
    fig, axes = plt.subplots(1, 3 if bars else 2, figsize=(16 if bars else 11, 4))
    groups, seen = {}, {}  # runs "<model>/seed<n>": one colour per model, one line style per seed
    for name, run in sorted(results["runs"].items()):
        group = name.split("/")[0]
        color = f"C{groups.setdefault(group, len(groups)) % 10}"
        style = ("-", "--", ":", "-.")[_next(seen, group) % 4]
        points = [h for h in run["history"] if h.get(y) is not None]
        axes[0].plot([h[x] for h in points], [h[y] for h in points], style, color=color, marker="o", ms=3, label=name)
        points = [h for h in run["history"] if h.get(loss) is not None]
        axes[1].plot([h[x] for h in points], [h[loss] for h in points], style, color=color, marker="o", ms=2,
                     label=name)
    for ax, label in zip(axes, (y_label, loss_label)):
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if bars:
        axes[2].bar(list(bars), list(bars.values()), color="tab:gray")
        axes[2].set_ylabel(bar_label)
        axes[2].tick_params(axis="x", labelrotation=30)
        axes[2].grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=Path(path).name + ".", suffix=".png", dir=Path(path).parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    _publish(tmp, path)
    return path
