"""Figures, in one consistent style."""

from __future__ import annotations

import base64
import io
import textwrap
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from .analysis import part_costs
from .scenes import CLASSES, Scene

if TYPE_CHECKING:
    import pandas as pd

CLASS_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00")


def png_base64(fig: plt.Figure, dpi: int = 110, colours: int | None = None, close: bool = True) -> str:
    """The figure as base64 PNG text for a ``data:image/png;base64,`` URL (the figure closed unless not
    ``close``); with ``colours``, a palette image of that many colours (a few times smaller)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        plt.close(fig)
    if colours is not None:
        image = Image.open(buf).convert("RGB").quantize(colours)
        buf = io.BytesIO()
        image.save(buf, format="png", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def draw_boxes(
    ax: plt.Axes, boxes, labels, scores=None, colour: str | None = None, dashed: bool = False, captions: bool = True
) -> None:
    """Boxes (x0, y0, x1, y1) with 0-based labels on ``ax``; class (and score) captions if ``captions``."""
    for i, (box, label) in enumerate(zip(boxes, labels)):
        x0, y0, x1, y1 = (float(v) for v in box)
        c = colour or CLASS_COLOURS[int(label) % len(CLASS_COLOURS)]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=c, lw=1.4, ls="--" if dashed else "-"))
        if not captions:
            continue
        text = CLASSES[int(label)] + ("" if scores is None else f" {float(scores[i]):.2f}")
        ax.text(x0, y0 - 1, text, color="white", fontsize=6, va="bottom", bbox={"fc": c, "ec": "none", "pad": 0.8})


def plot_detections(scenes: list[Scene], outputs: list[dict], score_thresh: float = 0.5, cols: int = 4) -> plt.Figure:
    """Ground truth (white, dashed) and detections above ``score_thresh`` (coloured by class)."""
    rows = -(-len(scenes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, scene, out in zip(axes.flat, scenes, outputs):
        ax.imshow(scene.image, extent=(0, scene.image.shape[1], scene.image.shape[0], 0))
        draw_boxes(ax, scene.boxes, scene.labels, colour="white", dashed=True, captions=False)
        keep = out["scores"] >= score_thresh
        draw_boxes(ax, out["boxes"][keep], out["labels"][keep] - 1, out["scores"][keep])
    fig.suptitle(f"white dashed: ground truth; coloured: detections with score >= {score_thresh}", fontsize=9)
    fig.tight_layout()
    return fig


STYLE = {"regressor": "#d62728", "classifier": "#1f77b4", "box": "#d62728", "class": "#1f77b4"}


def plot_noise_sensitivity(noise: dict) -> plt.Figure:
    """Toy study: degradation against the noise size, per model and noise kind (``toy.summary()["noise"]``)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    dashes = {"uniform": "-", "gaussian": "--", "uniform_same_std": ":"}
    for model, kinds in noise.items():
        for kind, rows in kinds.items():
            s, d = zip(*rows)
            ax.plot(s, d, dashes[kind], marker="o", ms=3, color=STYLE[model], label=f"{model}, {kind}")
    ax.set(xlabel="noise size s", ylabel="share of the task lost (increase)", title="Noise on the trained weights")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_scale_sweep(sweeps: dict[str, dict]) -> plt.Figure:
    """Toy study: each criterion (scaled to [0, 1]) against the clip ratio, one panel per model."""
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.4), squeeze=False)
    for ax, (model, sweep) in zip(axes.flat, sweeps.items()):
        ratio = [r["ratio"] for r in sweep["rows"]]
        for key, colour in (
            ("weight_mse", "grey"),
            ("task_loss", "black"),
            ("fisher", "#2ca02c"),
            ("hessian", "#9467bd"),
        ):
            v = [r[key] for r in sweep["rows"]]
            lo, hi = min(v), max(v)
            ax.plot(ratio, [(x - lo) / (hi - lo + 1e-30) for x in v], color=colour, label=key)
            ax.axvline(sweep["argmin"][key], color=colour, ls=":", lw=1)
        ax.set(title=model, xlabel="clip ratio (x max |w|)", ylabel="scaled to [0, 1] (lower part)", ylim=(-0.02, 0.5))
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"INT{sweeps[next(iter(sweeps))]['bits']} scale sweep: dotted lines mark each minimum", fontsize=9)
    fig.tight_layout()
    return fig


def plot_weight_histograms(named: dict[str, torch.Tensor], stats: list[dict], cols: int = 4) -> plt.Figure:
    """Histograms with the fitted Laplace (solid) and Gaussian (dashed) densities and the INT4 clip (red)."""
    rows = -(-len(named) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(named) :]:
        ax.axis("off")
    for ax, (name, w), st in zip(axes.flat, named.items(), stats):
        x = w.detach().flatten().double()
        ax.hist(x.numpy(), bins=80, density=True, color="#bbbbbb")
        grid = torch.linspace(float(x.min()), float(x.max()), 300, dtype=torch.float64)
        lap = torch.exp(-(grid - st["laplace_loc"]).abs() / st["laplace_b"]) / (2 * st["laplace_b"])
        gau = torch.exp(-((grid - st["gauss_mean"]) ** 2) / (2 * st["gauss_std"] ** 2)) / (
            st["gauss_std"] * (2 * torch.pi) ** 0.5
        )
        ax.plot(grid, lap, color="black", lw=1)
        ax.plot(grid, gau, color="black", lw=1, ls="--")
        clip = st["clip"] if isinstance(st["clip"], list | tuple) else (-st["clip"], st["clip"])
        for c in clip:
            ax.axvline(c, color="red", lw=1)
        ax.set_title(f"{name}\nkurtosis {st['kurtosis']:.1f}, clipped {100 * st['clipped']:.1f}%", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def plot_likelihoods(curves: dict) -> plt.Figure:
    """The MAP argument: the flat-prior posterior of one weight under each loss."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, ls in (("l1", "-"), ("l2", "--"), ("logistic", ":")):
        ax.plot(curves["w"], curves[name], ls, label=name)
    ax.set(xlabel="weight w", ylabel="posterior density", title="Posterior of one weight under each loss")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_iou_check(steps: list[float], analytic: list[float], monte_carlo: list[float]) -> plt.Figure:
    """Box-decoding error: the first-order E[1 - IoU] against the Monte Carlo estimate."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(steps, analytic, "-", color="black", label="first order (13/12) D")
    ax.plot(steps, monte_carlo, "o", color="#d62728", label="Monte Carlo")
    ax.set(xlabel="grid step D of the box deltas", ylabel="E[1 - IoU]", title="Rounding the deltas costs IoU")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_grid_comparison(rows: list[dict]) -> plt.Figure:
    """Uniform vs logarithmic grid on Laplace deltas: delta MSE and IoU loss against bits."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for grid, colour in (("uniform", "#1f77b4"), ("log", "#d62728")):
        sel = [r for r in rows if r["grid"] == grid]
        bits = [r["bits"] for r in sel]
        axes[0].semilogy(bits, [r["mse"] for r in sel], "o-", color=colour, label=grid)
        axes[1].plot(bits, [r["iou_loss"] for r in sel], "o-", color=colour, label=grid)
    axes[0].set(xlabel="bits", ylabel="delta MSE", title="Quantization error of the deltas")
    axes[1].set(xlabel="bits", ylabel="E[1 - IoU]", title="IoU lost after decoding")
    axes[1].legend()
    fig.tight_layout()
    return fig


def plot_head_stats(table: list[dict], key: str = "kurtosis") -> plt.Figure:
    """One statistic per head conv, class tower beside box tower, layer by layer."""
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for offset, branch in ((-0.2, "class"), (0.2, "box")):
        rows = [r for r in table if r["branch"] == branch]
        ax.bar([i + offset for i in range(len(rows))], [r[key] for r in rows], 0.4, color=STYLE[branch], label=branch)
    depth = max(sum(r["branch"] == b for r in table) for b in ("class", "box"))
    ax.set_xticks(range(depth), [f"conv {i}" for i in range(depth - 1)] + ["prediction"])
    ax.set(ylabel=key.replace("_", " "), title=f"Head, layer by layer: {key.replace('_', ' ')}")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_branch_noise(result: dict[str, list[list[float]]], metric: int = 1) -> plt.Figure:
    """AP (``metric`` 1), AP50 (2) or AP75 (3) when only one branch of the head gets weight noise."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for branch, rows in result.items():
        ax.plot([r[0] for r in rows], [r[metric] for r in rows], "o-", color=STYLE[branch], label=f"{branch} branch")
    ylabel = ("AP", "AP50", "AP75")[metric - 1]
    ax.set(xlabel="noise half-width / weight std", ylabel=ylabel, title="Noise on one branch")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_drift(
    scenes: list[Scene], fp_outputs: list[dict], q_outputs: list[dict], score_thresh: float = 0.5
) -> plt.Figure:
    """FP detections (white, dashed) against the quantized model's (coloured): how far boxes drift."""
    fig, axes = plt.subplots(1, len(scenes), figsize=(2.8 * len(scenes), 3.0), squeeze=False)
    for ax, scene, fp, q in zip(axes.flat, scenes, fp_outputs, q_outputs):
        ax.imshow(scene.image, extent=(0, scene.image.shape[1], scene.image.shape[0], 0))
        keep_fp, keep_q = fp["scores"] >= score_thresh, q["scores"] >= score_thresh
        draw_boxes(ax, fp["boxes"][keep_fp], fp["labels"][keep_fp] - 1, colour="white", dashed=True, captions=False)
        draw_boxes(ax, q["boxes"][keep_q], q["labels"][keep_q] - 1, q["scores"][keep_q])
        ax.axis("off")
    fig.suptitle(f"white dashed: FP detector; coloured: quantized detector (score >= {score_thresh})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_channel_levels(grids: dict[str, torch.Tensor], title: str) -> plt.Figure:
    """The levels of one channel under a few grids, one row each (e.g. ``{"searched k": q.levels(0), ...}``)."""
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.6 * len(grids)))
    rows = list(grids)[::-1]  # the first grid on top
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax.eventplot([grids[r].numpy() for r in rows], lineoffsets=range(len(rows)), colors=colours[: len(rows)][::-1])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_regularizer_curve(curve: dict[float, tuple[list, list]]) -> plt.Figure:
    """AdaRound's regulariser against h, one line per beta (``analysis.regularizer_curve``)."""
    fig, ax = plt.subplots(figsize=(5, 2.6))
    for beta, (h, values) in curve.items():
        ax.plot(h, values, label=f"beta = {beta:g}")
    ax.set(xlabel="h", ylabel="1 - |2h - 1|^beta", title="AdaRound's regulariser, per weight")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_unit_losses(losses: list[float], nearest: float, learned: float, title: str) -> plt.Figure:
    """A unit's local loss per iteration of soft rounding, against the loss of rounding to nearest and of the
    learned rounding made hard."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.plot(losses, lw=0.8, label="soft rounding (each iteration's batch)")
    ax.axhline(nearest, color="black", ls=":", label="rounded to nearest")
    ax.axhline(learned, color="C3", ls="--", label="learned rounding, hard")
    ax.set(xlabel="iteration", ylabel="L_H", yscale="log", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_filter(
    image,
    fp_boxes: torch.Tensor,
    q_boxes: torch.Tensor,
    confident: torch.Tensor,
    keep: torch.Tensor,
    theta_i: float | None = None,
) -> plt.Figure:
    """FGIC's filter on one image (boxes in pixels): confident pairs it keeps vs confident pairs it drops
    (at ``theta_i``, named in the titles when given)."""
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.6))
    threshold = "theta_I" if theta_i is None else f"theta_I = {theta_i:g}"
    for ax, mask, title in (
        (axes[0], keep, f"kept: confident and IoU >= {threshold}"),
        (axes[1], confident & ~keep, f"dropped: confident, IoU < {threshold}"),
    ):
        ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
        draw_boxes(ax, fp_boxes[mask], [0] * int(mask.sum()), colour="white", dashed=True, captions=False)
        draw_boxes(ax, q_boxes[mask], [0] * int(mask.sum()), colour="#d62728", captions=False)
        ax.set_title(f"{title} ({int(mask.sum())})", fontsize=8)
        ax.axis("off")
    fig.suptitle("anchor pairs: FP box white dashed, quantized box red", fontsize=9)
    fig.tight_layout()
    return fig


def plot_bench_bits(methods: pd.DataFrame, fp_ap: float) -> plt.Figure:
    """AP against the bit setting, one line per row (index rows, columns settings, cells mean AP): every row on
    the left; on the right, when there is a "naive" row, the others alone, as its collapse at W2A4 would squeeze
    them into one band."""
    others = methods.drop(index="naive", errors="ignore")
    panels = [(methods, "every row")] + (
        [(others, "without naive: the AP axis zoomed")] if 0 < len(others) < len(methods) else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (frame, title) in zip(axes[0], panels):
        for method, row in frame.iterrows():
            ax.plot(list(row.index), row.values, "o-", color=f"C{list(methods.index).index(method) % 10}",
                    label=method, lw=2.2 if method == "regptq" else 1.2)  # fmt: skip
        ax.axhline(fp_ap, color="black", ls=":", label=f"FP {fp_ap:.1f}")
        ax.set(xlabel="weight / activation bits", ylabel="AP", title=title)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Full quantization of the tiny RetinaNet", fontsize=10)
    fig.tight_layout()
    return fig


def plot_heatmap(table: pd.DataFrame, title: str, fmt: str = ".1f") -> plt.Figure:
    """A small annotated heatmap of a DataFrame (e.g. the theta_C x theta_I ablation)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    sns.heatmap(table, annot=True, fmt=fmt, cmap="viridis", ax=ax, cbar_kws={"label": "AP"})
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_part_loss(rows_by_method: dict[str, list[dict]]) -> plt.Figure:
    """Per detector part and method (``analysis.part_quantization`` rows): AP lost when only that part
    is quantized, and AP won back when everything but that part is quantized."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    methods = list(rows_by_method)
    width = 0.8 / len(methods)
    for i, (method, rows) in enumerate(rows_by_method.items()):
        costs = part_costs(rows)
        parts = list(costs["only"])
        lost, won = [costs["only"][p] for p in parts], [costs["all but"][p] for p in parts]
        ys = [y + (i - (len(methods) - 1) / 2) * width for y in range(len(parts))]
        axes[0].barh(ys, lost, height=width, label=method)
        axes[1].barh(ys, won, height=width, label=method)
    axes[0].set(yticks=range(len(parts)), yticklabels=parts, xlabel="AP lost", title="only this part quantized")
    axes[1].set(xlabel="AP won back", title="everything but this part quantized")
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_budget_curve(curve: pd.DataFrame, budget: int | None = None) -> plt.Figure:
    """AP against iterations per unit (``bench_tables.budget_curve``: index iterations, columns (method,
    setting)): a colour per method, a line style and marker per setting; ``budget``, the bench's chosen one, dotted."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    methods = list(dict.fromkeys(m for m, _ in curve.columns))
    settings = list(dict.fromkeys(s for _, s in curve.columns))
    for (method, setting), series in curve.items():
        series = series.dropna()
        colour = f"C{methods.index(method)}"
        style = settings.index(setting) % 4  # a line style and a marker per setting, told apart in the legend too
        ax.plot(series.index, series.values, "osD^"[style], ls=("-", "--", ":", "-.")[style], color=colour,
                label=f"{method} {setting}")  # fmt: skip
    if budget is not None:
        ax.axvline(budget, color="black", ls=":", lw=1, label=f"budget {budget}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(curve.index), [str(n) for n in curve.index])
    ax.minorticks_off()
    ax.set(xlabel="iterations per unit", ylabel="AP", title="Budget curve: AP against calibration iterations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_step_sizes(steps: pd.DataFrame) -> plt.Figure:
    """AP against AdaRound's lr x iterations (``bench_tables.step_size_table``): a colour per method, a marker
    per iteration count, so that equal products at different budgets sit on one vertical."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    frame = steps["AP"].reset_index()
    budgets = sorted(frame["iters"].unique())
    for i, method in enumerate(steps["AP"].columns):
        for j, n in enumerate(budgets):
            at = frame[frame["iters"] == n].sort_values("lr x iters")
            ax.plot(at["lr x iters"], at[method], marker="os^D"[j % 4], ls="-" if j == 0 else "--", color=f"C{i}",
                    label=f"{method}, {n} iterations")  # fmt: skip
    ax.set_xscale("log")
    products = sorted(frame["lr x iters"].unique())
    ax.set_xticks(products, [f"{p:g}" for p in products])
    ax.minorticks_off()
    ax.set(xlabel="AdaRound lr x iterations per unit", ylabel="AP", title="Step size: the budget as a distance")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


PART_COLOURS = {"backbone": "#8da0cb", "neck": "#66c2a5", "class head": "#fc8d62", "box head": "#e78ac3"}


def _part_of(name: str) -> str:
    if name.startswith(("head.classification_head", "roi_heads.box_predictor.cls")):
        return "class head"
    if name.startswith(("head.", "rpn.", "roi_heads.")):
        return "box head"
    return "neck" if ".fpn." in name else "backbone"


def plot_bit_policy(policies: list) -> plt.Figure:
    """The full-quantization policy, layer by layer in forward order (``qmodel.LayerPolicy`` rows): weight
    and input bits per conv ("fp" where the layer stays in float), coloured by bits, grouped by part."""
    fig, ax = plt.subplots(figsize=(min(14, 1.2 + 0.42 * len(policies)), 3.4))
    shades = {8: "#31a354", 4: "#fdae6b", 3: "#fd8d3c", 2: "#e6550d", None: "#d9d9d9"}
    for x, p in enumerate(policies):
        for y, bits in ((1, p.wbits), (0, p.abits)):
            ax.add_patch(Rectangle((x, y), 0.92, 0.92, color=shades.get(bits, "#fdd0a2")))
            ax.text(x + 0.46, y + 0.46, "fp" if bits is None else str(bits), ha="center", va="center", fontsize=7)
        ax.add_patch(Rectangle((x, -0.35), 0.92, 0.25, color=PART_COLOURS[_part_of(p.name)]))
    short = [p.name.replace("backbone.", "").replace("head.", "").replace("_head", "") for p in policies]
    ax.set_xticks([x + 0.46 for x in range(len(policies))], short, rotation=90, fontsize=6)
    ax.set_yticks([0.46, 1.46], ["input bits", "weight bits"])
    ax.set_xlim(-0.1, len(policies))
    ax.set_ylim(-0.4, 2)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    handles = [Rectangle((0, 0), 1, 1, color=c) for c in PART_COLOURS.values()]
    ax.legend(handles, list(PART_COLOURS), ncol=4, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1), frameon=False)
    ax.set_title(
        "Full quantization: every conv's weight and input bits (additions and GroupNorm stay in float)", pad=18
    )
    fig.tight_layout()
    return fig


def plot_calibration_loop(units: list[str], steps: list) -> plt.Figure:
    """Algorithm 1 as the code runs it: the units in forward order (left) and, for each, the steps
    ``steps`` (functions, shown with their name and the first sentence of their docstring)."""
    fig, ax = plt.subplots(figsize=(11, max(4.0, 0.2 * len(units) + 1)))
    ax.axis("off")
    top, gap = len(units) - 1.5, (len(units) - 2) / max(1, len(steps) - 1)
    half = 0.35 * gap
    ax.set_xlim(0, 11)
    ax.set_ylim(min(-1.0, top - (len(steps) - 1) * gap - half - 0.2), len(units) + 1)  # the last step's box whole
    for i, name in enumerate(units):
        y = len(units) - i
        ax.add_patch(Rectangle((0.1, y - 0.4), 3.2, 0.8, color=PART_COLOURS[_part_of(name)], alpha=0.8))
        ax.text(0.2, y, f"{i + 1:2d} {name}", va="center", fontsize=6.5, family="monospace")
    for j, fn in enumerate(steps):
        y = top - j * gap
        doc = " ".join((fn.__doc__ or "").split("\n\n")[0].split()).split(". ")[0].replace("``", "")
        ax.add_patch(Rectangle((4.3, y - half), 6.5, 2 * half, fill=False, ec="#555555"))
        ax.text(4.45, y + half * 0.55, f"{j + 1}. {fn.__name__}", fontsize=9, weight="bold", va="center")
        ax.text(4.45, y - half * 0.3, textwrap.fill(textwrap.shorten(doc, 260), 92), fontsize=6.5, va="center")
        if j:
            ax.annotate("", (7.5, y + half), (7.5, y + gap - half), arrowprops={"arrowstyle": "->"})
    ax.annotate("for each\nunit, in\norder", (4.2, top), (3.45, len(units) / 2 + 1), fontsize=7,
                arrowprops={"arrowstyle": "->", "connectionstyle": "arc3,rad=-0.2"})  # fmt: skip
    ax.annotate("next\nunit", (3.45, len(units) / 2 - 1), (3.85, top - (len(steps) - 1) * gap - half), fontsize=7,
                arrowprops={"arrowstyle": "->", "connectionstyle": "arc3,rad=-0.2"})  # fmt: skip
    ax.set_title("Calibration, unit by unit (Reg-PTQ's Algorithm 1, as regptq_lite.recon.reconstruct runs it)")
    return fig
