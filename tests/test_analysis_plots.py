"""Legibility of analyze.py's figures (issue 13, part 5): paired colours and a legend off
the data in op_spectrum.png, no colliding labels in selectivity.png, "n/a" explained in
filter_alignment.png. The figures are drawn for real and inspected before they close."""

import numpy as np
import pytest

from dualssl_tf.analysis import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions draw, kept (their renderer ready) at close."""
    figures = []
    real_close = plots.plt.close

    def close(fig=None):
        fig.canvas.draw()
        fig.test_renderer = fig.canvas.get_renderer()
        figures.append(fig)
        real_close(fig)
    monkeypatch.setattr(plots.plt, "close", close)
    return figures


def _bbox(artist, fig):
    return artist.get_window_extent(fig.test_renderer)


def test_op_spectrum_pairs_colours_per_layer_and_keeps_the_legend_off_the_axes(
        tmp_path, drawn):
    spectra = {}
    for k in range(5):
        spectra[f"depth_{k} init"] = np.geomspace(1, 1e-3, 20) * (k + 1)
        spectra[f"depth_{k} trained"] = np.geomspace(2, 1e-4, 20) * (k + 1)
    plots.op_spectra(spectra, str(tmp_path / "op.png"))
    fig = drawn[-1]
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 10
    for init, trained in zip(lines[::2], lines[1::2]):
        assert init.get_color() is not None
        assert np.allclose(plots.matplotlib.colors.to_rgba(init.get_color()),
                           plots.matplotlib.colors.to_rgba(trained.get_color()))
        assert init.get_linestyle() == "--" and trained.get_linestyle() == "-"
    colours = {tuple(plots.matplotlib.colors.to_rgba(l.get_color())) for l in lines}
    assert len(colours) == 5
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == [f"depth_{k}" for k in range(5)] + ["init", "trained"]
    assert _bbox(legend, fig).x0 >= _bbox(ax, fig).x1       # right of the data


def test_selectivity_labels_do_not_overlap(tmp_path, drawn):
    # Filters 1, 2, 5 (nearly) coincide; 0 and 4 saturate at +1; 3 is far away.
    init = [0.9, 0.1, 0.1, -0.8, 0.92, 0.11]
    final = [1.0, 0.0, 0.01, -0.9, 1.0, 0.0]
    plots.selectivity_scatter(init, final, str(tmp_path / "sel.png"))
    fig = drawn[-1]
    texts = [t for t in fig.axes[0].texts]
    assert sorted(t.get_text() for t in texts) == ["0,4", "1,2,5", "3"]
    boxes = [_bbox(t, fig) for t in texts]
    for i in range(len(boxes)):
        for j in range(i):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())


def test_alignment_bars_explain_na(tmp_path, drawn):
    plots.alignment_bars(["filter 0", "filter 1"], [0.5, None], [0.9, None],
                         str(tmp_path / "fa.png"), na_note="the block is zero.")
    fig = drawn[-1]
    assert "n/a" in [t.get_text() for t in fig.axes[0].texts]
    assert [t.get_text() for t in fig.texts] == ["n/a: the block is zero."]
    plots.alignment_bars(["filter 0"], [0.5], [0.9], str(tmp_path / "fb.png"),
                         na_note="the block is zero.")
    assert drawn[-1].texts == []                              # no n/a, no footnote
