"""The interactive LLAQ explorer of notebook 04: sliders for bits, m, k+, a+, k-, a- on a real head weight.

``llaq_panel`` draws one setting (histogram, levels of LLAQ, uniform and log2 grids, MSE, box error) and is
what the sliders call; ``compare_grids`` adds the uniform grid fitted by squared error, for notebook 04's table;
``llaq_explorer`` wires the sliders to the panel (it needs a kernel); ``llaq_scrubber`` precomputes the panel on
a small grid of settings and needs none (it works in the HTML report too).
``BoxProbe`` measures the box error: the IoU the FP detector's confident boxes lose when that one conv's
weight is replaced by its quantized form.
"""

from __future__ import annotations

import itertools

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display
from torch import nn

from .fgic import decode, paired_iou
from .llaq import PARAMS, LogAffineQuantizer
from .quantizers import Log2Quantizer, UniformQuantizer
from .scrubber import scrubber_html
from .theory import uniform_squared_error_fit
from .viz import png_base64


class BoxProbe:
    """Mean 1 - IoU of the FP detector's confident dense boxes when one head conv gets a new weight."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, layer: str, images: list[torch.Tensor], score: float = 0.05) -> None:
        self.model, self.conv = model.eval(), model.get_submodule(layer)
        self.weight = self.conv.weight.detach().clone()
        batch, _ = model.transform(images)
        self.features = list(model.backbone(batch.tensors).values())
        self.anchors = model.anchor_generator(batch, self.features)[0]
        self.image_size = tuple(batch.tensors.shape[-2:])
        self.boxes, logits = self._boxes()
        self.keep = torch.sigmoid(logits).amax(-1) >= score

    def _boxes(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.head(self.features)
        return decode(self.model, out["bbox_regression"], self.anchors, self.image_size), out["cls_logits"]

    @torch.no_grad()
    def iou_loss(self, weight: torch.Tensor) -> float:
        """Mean 1 - IoU over the confident anchors with ``weight`` in place of the layer's own."""
        self.conv.weight.copy_(weight)
        try:
            boxes, _ = self._boxes()
        finally:
            self.conv.weight.copy_(self.weight)
        return (1 - paired_iou(self.boxes, boxes))[self.keep].mean().item()


def llaq_initial(weight: torch.Tensor, bits: int) -> dict[str, float]:
    """Per-tensor LLAQ parameters from the MSE search (the sliders' starting point)."""
    q = LogAffineQuantizer(bits, channel_axis=0)
    q.init(weight.detach().reshape(1, -1))
    return {name: getattr(q, name).item() for name in PARAMS}


def llaq_quantizer(bits: int, **params: float) -> LogAffineQuantizer:
    """A per-tensor LLAQ with the given m, k_pos, a_pos, k_neg, a_neg."""
    q = LogAffineQuantizer(bits, channel_axis=0)
    for name in PARAMS:
        setattr(q, name, nn.Parameter(torch.tensor([float(params[name])])))
    q.initialized = True
    return q


def _grid(weight: torch.Tensor, q: nn.Module, probe: BoxProbe | None) -> dict:
    """One quantizer's weights, levels, MSE and (with a probe) box error on ``weight``."""
    with torch.no_grad():
        wq = q(weight.reshape(1, -1)).reshape(weight.shape)
        return {
            "weights": wq,
            "levels": torch.unique(wq),
            "mse": (wq - weight).pow(2).mean().item(),
            "box_error": probe.iou_loss(wq) if probe is not None else None,
        }


def reference_grids(weight: torch.Tensor, bits: int, probe: BoxProbe | None = None) -> dict:
    """``_grid`` of the two grids the panel draws beside LLAQ: uniform (its clip searched by the L_2.4 error,
    BRECQ's observer) and log2."""
    w = weight.detach()
    return {
        "uniform": _grid(w, UniformQuantizer(bits, channel_axis=0, observer="mse"), probe),
        "log2": _grid(w, Log2Quantizer(bits, channel_axis=0), probe),
    }


def panel_grids(weight: torch.Tensor, bits: int, probe: BoxProbe | None = None, **params: float) -> dict:
    """Quantized weights, MSE (and box error with a probe) of what the panel draws: LLAQ at ``params`` and
    ``reference_grids``."""
    llaq = _grid(weight.detach(), llaq_quantizer(bits, **params), probe)
    return {"LLAQ": llaq, **reference_grids(weight, bits, probe)}


def compare_grids(weight: torch.Tensor, bits: int, probe: BoxProbe | None = None, **params: float) -> dict:
    """``panel_grids`` and ``"uniform, squared error"``, the uniform grid whose clip is searched by squared error,
    LLAQ's own criterion: the fair partner for a comparison by weight MSE (notebook 04's table)."""
    fair = _grid(weight.detach(), lambda x: uniform_squared_error_fit(x, bits), probe)
    return {**panel_grids(weight, bits, probe, **params), "uniform, squared error": fair}


def _histogram(weight: torch.Tensor, bits: int) -> tuple[plt.Figure, plt.Axes]:
    """The panel's background: the weight histogram, with room above it for the grids' levels."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    x = weight.detach().flatten()
    lo, hi = torch.quantile(x, torch.tensor([0.0005, 0.9995])).tolist()
    ax.hist(x.numpy(), bins=150, range=(lo, hi), color="#cccccc", density=True)
    top = ax.get_ylim()[1]
    ax.set(xlim=(lo, hi), ylim=(0, top * 1.3), xlabel="weight", ylabel="density", title=f"{bits}-bit grids")
    return fig, ax


def _draw_grids(ax: plt.Axes, result: dict, m: float) -> list:
    """Each grid's levels above the histogram, LLAQ's m and a legend with the figures of merit; the artists."""
    top = ax.get_ylim()[1] / 1.3
    artists = []
    for row, (name, colour) in enumerate((("LLAQ", "#d62728"), ("uniform", "#1f77b4"), ("log2", "#2ca02c"))):
        r = result[name]
        label = f"{name}: MSE {r['mse']:.3g}" + ("" if r["box_error"] is None else f", box 1-IoU {r['box_error']:.4f}")
        low = top * (1.02 + 0.08 * row)
        artists.append(ax.vlines(r["levels"].numpy(), low, low + 0.06 * top, color=colour, label=label))
    artists.append(ax.axvline(m, color="#d62728", ls=":", lw=1))
    artists.append(ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.76)))
    return artists


def _merits(result: dict) -> dict:
    return {name: {k: v for k, v in r.items() if k in ("mse", "box_error")} for name, r in result.items()}


def llaq_panel(
    weight: torch.Tensor, bits: int, probe: BoxProbe | None = None, **params: float
) -> tuple[plt.Figure, dict]:
    """One setting of the explorer: histogram with each grid's levels, and the figures of merit."""
    result = panel_grids(weight, bits, probe, **params)
    fig, ax = _histogram(weight, bits)
    _draw_grids(ax, result, params["m"])
    fig.tight_layout()
    return fig, _merits(result)


def _reach(slider: widgets.FloatSlider, value: float) -> None:
    """Widen ``slider``'s range until it holds ``value`` (the search's k and a grow with the bit-width), then set it."""
    if value > slider.max:
        slider.max = value + (slider.max - slider.min) / 2
    if value < slider.min:
        slider.min = value
    slider.value = value


def llaq_explorer(weight: torch.Tensor, probe: BoxProbe | None = None, bits: int = 4) -> widgets.VBox:
    """Sliders for bits, m, k+, a+, k-, a-, redrawing ``llaq_panel`` (a new bit-width restarts from its MSE search)."""
    start = llaq_initial(weight, bits)
    spread = weight.detach().std().item()
    sliders = {
        "bits": widgets.IntSlider(value=bits, min=2, max=8, description="bits"),
        "m": widgets.FloatSlider(
            value=start["m"], min=-spread, max=spread, step=spread / 100, description="m", readout_format=".4f"
        ),
        **{
            name: widgets.FloatSlider(min=0.1, max=4.0, step=0.05, description=name)
            for name in ("k_pos", "k_neg")
        },
        **{
            name: widgets.FloatSlider(min=-5.0, max=40.0, step=0.25, description=name)
            for name in ("a_pos", "a_neg")
        },
    }  # fmt: skip
    for name in ("k_pos", "k_neg", "a_pos", "a_neg"):
        _reach(sliders[name], start[name])
    output = widgets.Output()
    box = widgets.VBox([widgets.HBox(list(sliders.values())[:3]), widgets.HBox(list(sliders.values())[3:]), output])
    box.stats, box.draws = {}, 0

    quiet = [False]

    def update(_change: object = None) -> None:
        if quiet[0]:
            return
        values = {name: s.value for name, s in sliders.items()}
        fig, box.stats = llaq_panel(weight, values.pop("bits"), probe, **values)
        box.draws += 1
        with output:
            output.clear_output(wait=True)
            display(fig)
        plt.close(fig)

    def reset(change: dict) -> None:
        """A new bit-width starts from its own MSE-searched parameters."""
        quiet[0] = True
        for name, value in llaq_initial(weight, change["new"]).items():
            _reach(sliders[name], value)
        quiet[0] = False
        update()

    sliders["bits"].observe(reset, names="value")
    for name in PARAMS:
        sliders[name].observe(update, names="value")
    box.sliders, box.update = sliders, update
    update()
    return box


def llaq_scrubber(
    weight: torch.Tensor,
    probe: BoxProbe | None = None,
    bits: tuple[int, ...] = (2, 3, 4),
    k_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0),
    a_shifts: tuple[float, ...] = (-1.0, 0.0, 1.0),
    dpi: int = 80,
) -> HTML:
    """The explorer without a kernel: the panel of ``llaq_panel`` for every bit-width, multiplier of k+ and k-
    and shift of a+ and a- around that bit-width's MSE-searched parameters, behind three sliders (one palette
    PNG per combination; it starts at the largest bit-width, k x 1 and a + 0, or the offered values nearest)."""
    axes = {"bits": [str(b) for b in bits], "k ×": [f"{s:g}" for s in k_scales], "a +": [f"{s:+g}" for s in a_shifts]}
    frames = []
    for b in bits:  # in frame_order: bits, then k, then a
        start, reference = llaq_initial(weight, b), reference_grids(weight, b, probe)
        fig, ax = _histogram(weight, b)
        for i, (scale, shift) in enumerate(itertools.product(k_scales, a_shifts)):
            k = {name: start[name] * scale for name in ("k_pos", "k_neg")}
            params = {**start, **k, **{name: start[name] + shift for name in ("a_pos", "a_neg")}}
            result = {"LLAQ": _grid(weight.detach(), llaq_quantizer(b, **params), probe), **reference}
            artists = _draw_grids(ax, result, params["m"])
            ax.set_title(f"{b}-bit grids; LLAQ " + ", ".join(f"{n} {params[n]:.2f}" for n in PARAMS if n != "m"))
            if i == 0:
                fig.tight_layout()  # once a figure: the frames of one bit-width share their layout
            frames.append(png_base64(fig, dpi=dpi, colours=64, close=False))
            for artist in artists:
                artist.remove()
        plt.close(fig)
    first = (len(bits) - 1, _nearest(k_scales, 1.0), _nearest(a_shifts, 0.0))
    title = "LLAQ on a grid of settings (no kernel needed): bits; k+ and k- times a factor; a+ and a- shifted"
    return HTML(scrubber_html(axes, frames, first, title))


def _nearest(values: tuple[float, ...], target: float) -> int:
    return min(range(len(values)), key=lambda i: abs(values[i] - target))
