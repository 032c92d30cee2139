"""One meaning per name: the renamed presets and fields, and the old names that keep loading."""

import json

import pytest
from typer.testing import CliRunner

from sparsediff.cli import app
from sparsediff.config import PRESETS, SparseConfig


def test_the_local_preset_is_the_3d_neighbourhood_and_window_names_only_1d_windows():
    assert SparseConfig.load("local").method == "local" and "window" not in PRESETS
    assert {"hilbert", "raster-window"} <= set(PRESETS)


def test_old_window_preset_and_method_load_as_local_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match="'window' is renamed preset 'local'"):
        assert SparseConfig.load("window") == SparseConfig.load("local")
    old_file = tmp_path / "old.json"
    old_file.write_text(json.dumps({"method": "window", "density": 0.3, "block_size": 16}))
    with pytest.warns(FutureWarning, match="method 'window' is renamed method 'local'"):
        config = SparseConfig.load(old_file)
    assert (config.method, config.density, config.block_size) == ("local", 0.3, 16)


def test_sparsed_keeps_a_keep_ratio_and_old_density_loads_into_it(tmp_path):
    assert SparseConfig.load("sparsed").keep_ratio == PRESETS["sparsed"]["keep_ratio"]
    old_file = tmp_path / "old-sparsed.json"
    old_file.write_text(json.dumps({"method": "sparsed", "density": 0.6}))
    with pytest.warns(FutureWarning, match="`density` of a sparsed config is renamed `keep_ratio`"):
        assert SparseConfig.load(old_file).keep_ratio == 0.6
    with pytest.warns(FutureWarning, match="renamed `keep_ratio`"):
        assert SparseConfig.load("sparsed", density=0.5).keep_ratio == 0.5
    saved = SparseConfig.load("sparsed", keep_ratio=0.45).save(tmp_path / "new.json")
    assert SparseConfig.load(saved).keep_ratio == 0.45  # a saved config round-trips without a warning


def test_density_on_sparsed_is_refused_with_the_keep_ratio_named():
    result = CliRunner().invoke(app, ["generate", "--model", "tiny-dlm", "--density", "0.5", "--prompt", "1 2 ? A"])
    assert result.exit_code == 2
    assert "--keep-ratio" in " ".join(result.output.split())
