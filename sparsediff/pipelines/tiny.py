"""Tiny random-weight transformers and full pipelines of every supported diffusers family.

They exist to run each family's real attention code offline (no hub): 2 heads of 16 dims,
1-2 blocks, built from configs. `make_inputs` gives the forward arguments for a latent grid of
(frames, height, width) latent pixels, so tests can pick sizes that are not block multiples.
`tiny_pipeline(family)` adds a word-level tokenizer, tiny text encoders and a tiny VAE. The
video VAEs compress less than the real ones (4x spatially; in time Wan 2x, CogVideoX 1x): with
a transformer this small, a real-ratio VAE decode would take most of the time and hide what
attention costs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import torch

HEADS, HEAD_DIM, TEXT_DIM, POOLED_DIM = 2, 16, 32, 16
VOCAB, TEXT_LEN = 16, 8  # tiny_tokenizer's vocabulary; text tokens per prompt
ROPE_AXES = (4, 6, 6)


@dataclass(frozen=True)
class TinyTransformer:
    family: str
    model_class: str
    config: dict
    make_inputs: Callable[..., dict]  # (batch, frames, height, width, text_len, timestep, gen) -> kwargs
    video: bool

    def build(self, seed: int = 0, **overrides) -> torch.nn.Module:
        torch.manual_seed(seed)
        return getattr(diffusers, self.model_class)(**(self.config | overrides)).eval()


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


def _t(batch, timestep):
    return torch.full((batch,), float(timestep))


def _wan_inputs(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, 4, frames, height, width),
        timestep=_t(batch, timestep),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
    )


def _cogvideox_inputs(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, frames, 4, height, width),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        timestep=_t(batch, timestep),
    )


def _hunyuan_inputs(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, 4, frames, height, width),
        timestep=_t(batch, timestep),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        encoder_attention_mask=torch.ones(batch, text_len),
        pooled_projections=_randn(gen, batch, POOLED_DIM),
    )


def _ltx_inputs(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, frames * height * width, 8),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        timestep=_t(batch, timestep),
        encoder_attention_mask=torch.ones(batch, text_len),
        num_frames=frames,
        height=height,
        width=width,
    )


def _flux_inputs(batch, frames, height, width, text_len, timestep, gen):
    hh, ww = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    img_ids = torch.stack((torch.zeros_like(hh), hh, ww), -1).view(-1, 3).float()
    return dict(
        hidden_states=_randn(gen, batch, height * width, 16),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        pooled_projections=_randn(gen, batch, POOLED_DIM),
        timestep=_t(batch, timestep / 1000),
        img_ids=img_ids,
        txt_ids=torch.zeros(text_len, 3),
    )


def _sd3_inputs(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, 4, height, width),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        pooled_projections=_randn(gen, batch, POOLED_DIM),
        timestep=_t(batch, timestep),
    )


def _pixart_inputs(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, 4, height, width),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        timestep=_t(batch, timestep),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def _qwen_inputs(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, (height // 2) * (width // 2), 16),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        encoder_hidden_states_mask=torch.ones(batch, text_len),
        timestep=_t(batch, timestep / 1000),
        img_shapes=[[(1, height // 2, width // 2)]] * batch,
    )


TINY_TRANSFORMERS: dict[str, TinyTransformer] = {
    t.family: t
    for t in (
        TinyTransformer(
            "wan",
            "WanTransformer3DModel",
            dict(
                patch_size=(1, 2, 2),
                num_attention_heads=HEADS,
                attention_head_dim=HEAD_DIM,
                in_channels=4,
                out_channels=4,
                text_dim=TEXT_DIM,
                freq_dim=32,
                ffn_dim=64,
                num_layers=2,
                rope_max_seq_len=64,
            ),
            _wan_inputs,
            video=True,
        ),
        TinyTransformer(
            "cogvideox",
            "CogVideoXTransformer3DModel",
            dict(
                num_attention_heads=HEADS,
                attention_head_dim=HEAD_DIM,
                in_channels=4,
                out_channels=4,
                time_embed_dim=32,
                text_embed_dim=TEXT_DIM,
                num_layers=2,
                sample_width=64,
                sample_height=64,
                sample_frames=33,
                patch_size=2,
                max_text_seq_length=8,
            ),
            _cogvideox_inputs,
            video=True,
        ),
        TinyTransformer(
            "hunyuanvideo",
            "HunyuanVideoTransformer3DModel",
            dict(
                in_channels=4,
                out_channels=4,
                num_attention_heads=HEADS,
                attention_head_dim=HEAD_DIM,
                num_layers=1,
                num_single_layers=1,
                num_refiner_layers=1,
                patch_size=2,
                patch_size_t=1,
                text_embed_dim=TEXT_DIM,
                pooled_projection_dim=POOLED_DIM,
                guidance_embeds=False,
                rope_axes_dim=ROPE_AXES,
            ),
            _hunyuan_inputs,
            video=True,
        ),
        TinyTransformer(
            "ltx",
            "LTXVideoTransformer3DModel",
            dict(
                in_channels=8,
                out_channels=8,
                num_attention_heads=HEADS,
                attention_head_dim=HEAD_DIM,
                cross_attention_dim=TEXT_DIM,
                num_layers=2,
                caption_channels=TEXT_DIM,
            ),
            _ltx_inputs,
            video=True,
        ),
        TinyTransformer(
            "flux",
            "FluxTransformer2DModel",
            dict(
                patch_size=1,
                in_channels=16,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=HEAD_DIM,
                num_attention_heads=HEADS,
                joint_attention_dim=TEXT_DIM,
                pooled_projection_dim=POOLED_DIM,
                axes_dims_rope=ROPE_AXES,
            ),
            _flux_inputs,
            video=False,
        ),
        TinyTransformer(
            "sd3",
            "SD3Transformer2DModel",
            dict(
                sample_size=32,
                patch_size=2,
                in_channels=4,
                num_layers=2,
                attention_head_dim=HEAD_DIM,
                num_attention_heads=HEADS,
                joint_attention_dim=TEXT_DIM,
                caption_projection_dim=32,
                pooled_projection_dim=POOLED_DIM,
                out_channels=4,
                pos_embed_max_size=32,
            ),
            _sd3_inputs,
            video=False,
        ),
        TinyTransformer(
            "pixart",
            "PixArtTransformer2DModel",
            dict(
                num_attention_heads=HEADS,
                attention_head_dim=HEAD_DIM,
                in_channels=4,
                out_channels=8,
                num_layers=2,
                cross_attention_dim=32,
                sample_size=32,
                patch_size=2,
                caption_channels=TEXT_DIM,
            ),
            _pixart_inputs,
            video=False,
        ),
        TinyTransformer(
            "qwenimage",
            "QwenImageTransformer2DModel",
            dict(
                patch_size=2,
                in_channels=16,
                out_channels=4,
                num_layers=2,
                attention_head_dim=HEAD_DIM,
                num_attention_heads=HEADS,
                joint_attention_dim=TEXT_DIM,
                axes_dims_rope=ROPE_AXES,
            ),
            _qwen_inputs,
            video=False,
        ),
    )
}


def tiny_tokenizer(model_max_length: int = 77):
    """A word-level tokenizer built locally (no hub): specials, a few words, unknowns map to <unk>."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = ("a", "red", "green", "blue", "circle", "square", "moving", "left", "right", "up", "down", "cat")
    vocab = {w: i for i, w in enumerate(("<pad>", "</s>", "<unk>", *words))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def _tiny_t5(encoder_class: str = "T5EncoderModel", d_model: int = TEXT_DIM):
    import transformers

    config_class = transformers.UMT5Config if encoder_class == "UMT5EncoderModel" else transformers.T5Config
    config = config_class(vocab_size=VOCAB, d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    return getattr(transformers, encoder_class)(config).eval()


def _tiny_clip(hidden: int, projection: int | None = None):
    import transformers

    config = transformers.CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=projection or hidden,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    model_class = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return model_class(config).eval()


def _tiny_vae_2d(latent_channels: int):
    """AutoencoderKL with 8x spatial compression (4 blocks of 8 channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        shift_factor=0.0,
    )


def _wan_pipeline(seed: int):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    return WanPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=_tiny_t5("UMT5EncoderModel"),
        vae=AutoencoderKLWan(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True],  # WanPipeline needs a temporal factor > 1
            scale_factor_temporal=2,
            scale_factor_spatial=4,
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ),
        transformer=TINY_TRANSFORMERS["wan"].build(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _cogvideox_pipeline(seed: int):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline

    return CogVideoXPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=_tiny_t5(),
        vae=AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * 3,
            up_block_types=("CogVideoXUpBlock3D",) * 3,
            block_out_channels=(8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=1,
        ),
        # Rotary positions (as CogVideoX-5B): any size, where learned positions fix one.
        transformer=TINY_TRANSFORMERS["cogvideox"].build(
            seed, use_rotary_positional_embeddings=True, max_text_seq_length=TEXT_LEN
        ),
        scheduler=CogVideoXDDIMScheduler(),
    )


def _hunyuanvideo_pipeline(seed: int):
    import transformers
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    llama = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return HunyuanVideoPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=transformers.LlamaModel(llama).eval(),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_2=_tiny_clip(POOLED_DIM),
        vae=AutoencoderKLHunyuanVideo(
            latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 3,
            up_block_types=("HunyuanVideoUpBlock3D",) * 3,
            block_out_channels=(8, 8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            spatial_compression_ratio=4,
            temporal_compression_ratio=4,
        ),
        transformer=TINY_TRANSFORMERS["hunyuanvideo"].build(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


def _ltx_pipeline(seed: int):
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline

    return LTXPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=_tiny_t5(),
        vae=AutoencoderKLLTXVideo(
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4,
            upsample_factor=(1,) * 4,
            patch_size=1,
            patch_size_t=1,
        ),
        transformer=TINY_TRANSFORMERS["ltx"].build(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def _flux_pipeline(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae_2d(latent_channels=4),
        text_encoder=_tiny_clip(POOLED_DIM),
        tokenizer=tiny_tokenizer(),
        text_encoder_2=_tiny_t5(),
        tokenizer_2=tiny_tokenizer(),
        transformer=TINY_TRANSFORMERS["flux"].build(seed),
    )


def _sd3_pipeline(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=TINY_TRANSFORMERS["sd3"].build(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae_2d(latent_channels=4),
        text_encoder=_tiny_clip(TEXT_DIM // 2, POOLED_DIM // 2),
        tokenizer=tiny_tokenizer(),
        text_encoder_2=_tiny_clip(TEXT_DIM // 2, POOLED_DIM // 2),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=_tiny_t5(),
        tokenizer_3=tiny_tokenizer(),
    )


def _pixart_pipeline(seed: int):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline

    return PixArtAlphaPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=_tiny_t5(),
        vae=_tiny_vae_2d(latent_channels=4),
        transformer=TINY_TRANSFORMERS["pixart"].build(seed),
        scheduler=DPMSolverMultistepScheduler(),
    )


TINY_PIPELINES = {
    "wan": _wan_pipeline,
    "cogvideox": _cogvideox_pipeline,
    "hunyuanvideo": _hunyuanvideo_pipeline,
    "ltx": _ltx_pipeline,
    "flux": _flux_pipeline,
    "sd3": _sd3_pipeline,
    "pixart": _pixart_pipeline,
}


def tiny_pipeline(family: str, seed: int = 0):
    """A full diffusers pipeline of `family` with tiny random weights, built offline."""
    if family not in TINY_PIPELINES:
        raise ValueError(f"no tiny pipeline for {family!r}; choose one of {', '.join(TINY_PIPELINES)}")
    torch.manual_seed(seed)
    return TINY_PIPELINES[family](seed)
