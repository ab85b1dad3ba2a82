"""The PNGs a person reads: a graph image as one figure of a few panels per row with
element-named nodes and channel units, epochs as whole numbers, a reliability diagram
whose legend hides no bar and whose bars say how many samples they hold."""

import struct

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from deq_petsc.science.data.graph_image import (CHANNEL_MEANINGS, MOLECULE_CHANNELS, PANELS_PER_ROW,
                                        PERIODIC_CHANNELS, graph_from_image, render_png,
                                        smiles_image)
from deq_petsc.science.plots import integer_ticks, reliability_figure, subplots


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    with open(path, "rb") as fh:
        header = fh.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_every_channel_has_a_meaning_and_a_unit():
    for channels in (MOLECULE_CHANNELS, PERIODIC_CHANNELS):
        meanings = CHANNEL_MEANINGS[channels]
        assert len(meanings) == len(channels)
        assert all(meaning and unit for meaning, unit in meanings)


def test_a_stored_image_is_drawn_with_its_atoms_named_by_element():
    graph = smiles_image("OC(=O)c1ccccc1")
    again = graph_from_image(graph.image, graph.channels)
    assert again.nodes == graph.nodes               # decoded from the element channel
    assert set(again.nodes) == {"C", "H", "O"} and len(again.nodes) == 15


@pytest.mark.parametrize("channels", [7, 17])
def test_a_graph_image_is_a_grid_a_person_can_read(tmp_path, channels):
    graph = smiles_image("CCO")
    if channels == 17:                              # a periodic image's channel count
        image = np.zeros((17, 16, 16), dtype=np.float32)
        image[3, [0, 1], [0, 1]] = [0.8, 1.1]       # O and Na on the element channel
        graph = graph_from_image(image, PERIODIC_CHANNELS)
        assert graph.nodes == ["O", "Na"]
    width, height = _png_size(render_png(graph, tmp_path / "g.png", title="t"))
    rows = -(-channels // PANELS_PER_ROW)
    assert width <= 1700, f"{width} pixels wide: panels in one row again?"
    assert height >= 300 * rows                      # each row of panels a readable height


def test_epoch_ticks_are_whole_numbers_even_for_one_epoch():
    for epochs in ([1], [1, 2, 3], list(range(1, 31))):
        fig, ax = subplots()
        ax.plot(epochs, np.linspace(0, 1, len(epochs)))
        integer_ticks([ax], epochs)
        ticks = [t for t in ax.get_xticks() if epochs[0] - 0.5 <= t <= epochs[-1] + 0.5]
        assert ticks and all(float(t).is_integer() for t in ticks), (epochs, ticks)


def test_reliability_legend_hides_no_bar_and_bins_show_their_counts():
    bins = [{"low": 0.5 + 0.1 * k, "high": 0.6 + 0.1 * k, "n": n, "accuracy": a,
             "confidence": 0.55 + 0.1 * k}
            for k, (n, a) in enumerate([(7, 0.4), (5, 0.9), (12, 0.7), (30, 0.85), (104, 0.99)])]
    fig = reliability_figure({"ece": 0.05, "bins": bins})
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert {"7", "5", "12", "30", "104"} <= texts
    legend = fig.legends[0].get_window_extent(renderer)
    for bar in ax.patches:
        assert not legend.overlaps(bar.get_window_extent(renderer))
