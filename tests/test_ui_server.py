"""The app as a shared server: a bounded model cache, local folders only where allowed, bounded
requests and request folders that do not pile up (no browser needed)."""

import pytest

from sparsediff.config import SparseConfig
from sparsediff.generate import Request
from sparsediff.pipelines.registry import Size

pytest.importorskip("gradio")

from sparsediff.ui.app import Limits, Models, RequestFolders


def test_the_model_cache_keeps_the_most_recently_used_few():
    models = Models(capacity=2)
    first = models.get("tiny-wan")
    models.get("tiny-flux")
    assert models.get("tiny-wan") is first  # served from the cache
    models.get("tiny-cogvideox")
    assert models.names() == ["tiny-wan", "tiny-cogvideox"]  # tiny-flux was the least recently used


def test_local_folders_and_hub_ids_only_where_the_operator_allows(tmp_path):
    closed = Models(allow_folders=False)
    for name in (str(tmp_path), "/etc", "someone/some-model"):
        with pytest.raises(ValueError, match=r"built-in models only.*--allow-local-folders") as err:
            closed.get(name)
        assert "exist" not in str(err.value)  # says nothing about the server's files
    with pytest.raises((ValueError, FileNotFoundError, OSError)):
        Models(allow_folders=True).get(str(tmp_path / "nothing-here"))


def test_requests_are_bounded_before_any_work():
    limits = Limits()
    small = Request("a cat", Size(5, 64, 64), 4, 5.0, 0)
    limits.check(small, SparseConfig.load("local"))
    with pytest.raises(ValueError, match="this server takes at most 100"):
        limits.check(Request("a cat", Size(5, 64, 64), 500, 5.0, 0))
    with pytest.raises(ValueError, match="pixels; this server takes at most"):
        limits.check(Request("a cat", Size(129, 1024, 1024), 4, 5.0, 0))
    with pytest.raises(ValueError, match="block size 1: this server takes blocks of 16 or more"):
        limits.check(config=SparseConfig(method="local", block_size=1))
    with pytest.raises(ValueError, match="backend 'reference'"):
        limits.check(config=SparseConfig(method="local", backend="reference"))


def test_request_folders_keep_only_the_newest_and_go_with_the_app():
    folders = RequestFolders(keep=2)
    made = [folders.new() for _ in range(4)]
    assert [f.exists() for f in made] == [False, False, True, True]
    folders.close()
    assert not folders.root.exists()
