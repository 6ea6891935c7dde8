"""Sliders without a kernel: precomputed PNG frames on a grid of settings, one range slider per setting, and
plain JavaScript that shows the frame of the chosen combination. The HTML works wherever a page runs its
scripts (JupyterLab, nbconvert's static pages) and needs no network; without scripts it shows the start frame.
"""

from __future__ import annotations

import html
import itertools
import json

SCRIPT = """<script>
(function () {
  const root = document.currentScript.parentElement;
  const labels = %(labels)s;
  const frames = %(frames)s;
  const sliders = Array.from(root.querySelectorAll("input[type=range]"));
  const image = root.querySelector("img");
  function show() {
    let index = 0;
    sliders.forEach(function (slider, axis) {
      index = index * labels[axis].length + Number(slider.value);
      slider.nextElementSibling.textContent = labels[axis][Number(slider.value)];
    });
    image.src = "data:image/png;base64," + frames[index];
  }
  sliders.forEach(function (slider) { slider.addEventListener("input", show); });
})();
</script>"""


def _js(value: object) -> str:
    """``value`` as a JavaScript literal that cannot close the script element it sits in."""
    return json.dumps(value).replace("</", "<\\/")


def frame_order(axes: dict[str, list[str]]) -> list[tuple[int, ...]]:
    """The index combinations of ``axes`` in the order the frames are stored (the last axis fastest)."""
    return list(itertools.product(*(range(len(values)) for values in axes.values())))


def scrubber_html(axes: dict[str, list[str]], frames: list[str], start: tuple[int, ...], title: str = "") -> str:
    """HTML of a frame scrubber: ``axes`` maps each slider's name to its value labels, ``frames`` holds one base64
    PNG per combination in ``frame_order``, ``start`` the slider positions shown first."""
    shape = [len(values) for values in axes.values()]
    inside = len(start) == len(shape) and all(0 <= at < n for at, n in zip(start, shape))
    if len(frames) != len(frame_order(axes)) or not inside:
        raise ValueError(f"{len(frames)} frames for sliders of {shape} positions, start {start}")
    first = frame_order(axes).index(tuple(start))
    controls = "".join(
        f'<label style="margin-right:1.5em">{html.escape(name)} '
        f'<input type="range" min="0" max="{len(values) - 1}" step="1" value="{at}">'
        f"<output>{html.escape(values[at])}</output></label>"
        for (name, values), at in zip(axes.items(), start)
    )
    script = SCRIPT % {"labels": _js(list(axes.values())), "frames": _js(frames)}
    return (
        '<div class="regptq-scrubber">'
        + (f"<p>{html.escape(title)}</p>" if title else "")
        + f"<div>{controls}</div>"
        + f'<img alt="{html.escape(title or "frame")}" style="max-width:100%" '
        f'src="data:image/png;base64,{frames[first]}">' + script + "</div>"
    )
