"""The LLAQ explorer of notebook 04, driven from pytest: sliders change what it shows; its kernel-free scrubber,
driven in a real browser."""

import json
import re

import matplotlib
import pytest
import torch
from browser import dom, needs_chromium

from regptq_lite import widgets
from regptq_lite.scenes import SceneSet
from regptq_lite.scrubber import scrubber_html

matplotlib.use("Agg")
LAYER = "head.regression_head.conv.3.0"


@pytest.fixture(scope="module")
def explorer(fp_model):
    weight = fp_model.get_submodule(LAYER).weight.detach()
    probe = widgets.BoxProbe(fp_model, LAYER, SceneSet("calib", size=2).images())
    return weight, probe, widgets.llaq_explorer(weight, probe, bits=4)


def test_explorer_starts_from_the_mse_search(explorer):
    weight, _, box = explorer
    start = widgets.llaq_initial(weight, 4)
    for name in widgets.PARAMS:
        assert box.sliders[name].value == pytest.approx(start[name], abs=box.sliders[name].step)
    assert set(box.stats) == {"LLAQ", "uniform", "log2"}


def test_moving_k_redraws_with_a_new_error(explorer):
    _, _, box = explorer
    before, draws, uniform = box.stats["LLAQ"]["mse"], box.draws, box.stats["uniform"]["mse"]
    box.sliders["k_pos"].value = 0.3
    assert box.draws == draws + 1
    assert box.stats["LLAQ"]["mse"] != before
    assert box.stats["uniform"]["mse"] == uniform  # the uniform grid does not depend on the LLAQ sliders


def test_a_new_bit_width_restarts_from_its_own_search(explorer):
    weight, _, box = explorer
    box.sliders["bits"].value = 3
    start = widgets.llaq_initial(weight, 3)
    assert box.sliders["a_pos"].value == pytest.approx(start["a_pos"], abs=box.sliders["a_pos"].step)
    assert box.stats["LLAQ"]["mse"] < box.stats["log2"]["mse"]


def test_every_bit_width_restarts_inside_the_sliders_range(explorer):
    weight, _, box = explorer
    box.sliders["bits"].value = 8  # the search's k and a at 8 bits lie beyond the 4-bit ranges
    start = widgets.llaq_initial(weight, 8)
    for name in widgets.PARAMS:
        assert box.sliders[name].value == pytest.approx(start[name], abs=box.sliders[name].step)
    box.sliders["bits"].value = 4


def test_box_probe_is_zero_for_the_float_weight_and_restores_it(explorer):
    weight, probe, _ = explorer
    assert probe.iou_loss(weight) == pytest.approx(0.0, abs=1e-6)
    assert probe.iou_loss(torch.zeros_like(weight)) > 0.01
    assert torch.equal(probe.conv.weight, weight)


def test_llaq_beats_uniform_on_the_peaked_box_weight(explorer):
    weight, probe, _ = explorer
    result = widgets.compare_grids(weight, 4, probe, **widgets.llaq_initial(weight, 4))
    assert result["LLAQ"]["mse"] < result["uniform"]["mse"]
    assert result["uniform, squared error"]["mse"] <= result["uniform"]["mse"]  # fitted by the measure itself
    assert len(result["LLAQ"]["levels"]) <= 16 and len(result["uniform, squared error"]["levels"]) <= 16


SCRUBBER_GRID = {"bits": (3, 4), "k_scales": (0.5, 1.0, 2.0), "a_shifts": (0.0, 1.0)}
# moves the scrubber's "k" slider to its first position and notes what the page then shows
DRIVER = """<script>
const root = document.querySelector(".regptq-scrubber");
const image = root.querySelector("img"), slider = root.querySelectorAll("input[type=range]")[1];
const before = image.src;
slider.value = "0";
slider.dispatchEvent(new Event("input"));
const label = slider.nextElementSibling.textContent;
document.body.dataset.moved = (image.src !== before ? "new frame" : "same frame") + ", k " + label;
</script>"""


@pytest.fixture(scope="module")
def scrubber():
    weight = torch.distributions.Laplace(0.0, 0.02).sample((16, 16, 3, 3))
    return widgets.llaq_scrubber(weight, **SCRUBBER_GRID).data


def _frames(page: str) -> list[str]:
    return json.loads(re.search(r"const frames = (\[.*?\]);", page)[1])


def test_the_scrubber_holds_one_small_frame_per_setting_and_starts_at_k1_a0(scrubber):
    frames = _frames(scrubber)
    assert len(frames) == 2 * 3 * 2 and len(set(frames)) == len(frames)
    assert max(map(len, frames)) < 40_000  # base64: the default 45 frames stay under 2 MB
    shown = re.search(r'<img [^>]*src="data:image/png;base64,([^"]+)"', scrubber)[1]
    assert shown == frames[(1 * 3 + 1) * 2 + 0]  # 4 bits, k x 1, a + 0
    assert re.findall(r"<output>([^<]*)</output>", scrubber) == ["4", "1", "+0"]


def test_the_scrubber_refuses_frames_that_do_not_fill_its_grid():
    with pytest.raises(ValueError, match="3 frames"):
        scrubber_html({"bits": ["2", "3"], "k": ["1", "2"]}, ["a", "b", "c"], (0, 0))
    with pytest.raises(ValueError, match="start"):
        scrubber_html({"bits": ["2", "3"]}, ["a", "b"], (2,))


def _move_k(page_html: str, page) -> str:
    page.write_text(page_html.replace("</body>", DRIVER + "</body>"))
    return re.search(r'data-moved="([^"]*)"', dom(page, wait_ms=3000))[1]


@needs_chromium
def test_a_browser_without_a_kernel_moves_the_scrubber(scrubber, tmp_path):
    page = f"<!doctype html><html><head><meta charset=utf-8></head><body>{scrubber}</body></html>"
    assert _move_k(page, tmp_path / "scrubber.html") == "new frame, k 0.5"


@needs_chromium
def test_the_report_page_of_notebook_04_moves_its_scrubber(fast_report, tmp_path):
    page = (fast_report / "04_interactive_log_affine.html").read_text()
    assert "regptq-scrubber" in page, "notebook 04's report page lost its scrubber"
    assert _move_k(page, tmp_path / "04.html").startswith("new frame, k ")
