"""Full tiny pipelines (local tokenizer, text encoder, VAE) run end to end with sparse attention."""

import numpy as np
import torch

import sparsediff
from sparsediff.pipelines.tiny import tiny_pipeline


def test_wan_video_pipeline_with_cfg_and_dense_first_step():
    pipe = tiny_pipeline("wan")
    args = dict(
        prompt="a red circle moving left",
        negative_prompt="blue",
        num_frames=9,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=3.0,
        output_type="np",
    )
    native = pipe(**args, generator=torch.Generator().manual_seed(0)).frames[0]
    with sparsediff.sparse(pipe, "local", density=0.3, block_size=16, schedule={"dense_fraction": 0.25}) as state:
        video = pipe(**args, generator=torch.Generator().manual_seed(0)).frames[0]
        # 4 steps x 2 CFG calls x 2 self-attention layers; the first step (25%) dense.
        assert state.calls["dense: schedule"] == 4 and state.calls["sparse"] == 12
        assert len(state.plans) == 2  # one plan per layer, built once for all steps
    assert video.shape == native.shape == (9, 64, 64, 3) and np.isfinite(video).all()
    assert np.abs(video - native).max() > 1e-4
    again = pipe(**args, generator=torch.Generator().manual_seed(0)).frames[0]
    assert np.array_equal(again, native)  # removed on exit


def test_pixart_image_pipeline():
    pipe = tiny_pipeline("pixart")
    args = dict(
        prompt="a red circle",
        height=64,
        width=64,
        num_inference_steps=3,
        guidance_scale=2.0,
        output_type="np",
        clean_caption=False,
        max_sequence_length=16,
    )
    native = pipe(**args, generator=torch.Generator().manual_seed(0)).images[0]
    with sparsediff.sparse(pipe, "dense") as state:
        parity = pipe(**args, generator=torch.Generator().manual_seed(0)).images[0]
        assert state.calls["sparse"] == 3 * 2  # 3 steps x 2 self-attention layers (CFG batched)
    assert np.abs(parity - native).max() <= 1e-5
    with sparsediff.sparse(pipe, "local", density=0.3, block_size=16):
        image = pipe(**args, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.abs(image - native).max() > 1e-4
