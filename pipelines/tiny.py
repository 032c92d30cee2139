"""Tiny random-weight transformers of every supported diffusers family, with matching inputs.

They exist to run each family's real attention code offline (no hub): 2 heads of 16 dims,
1-2 blocks, built from configs. `make_inputs` gives the forward arguments for a latent grid of
(frames, height, width) latent pixels, so tests can pick sizes that are not block multiples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import torch

HEADS, HEAD_DIM, TEXT_DIM, POOLED_DIM = 2, 16, 32, 16
ROPE_AXES = (4, 6, 6)


@dataclass(frozen=True)
class TinyTransformer:
    family: str
    model_class: str
    config: dict
    make_inputs: Callable[..., dict]  # (batch, frames, height, width, text_len, timestep, gen) -> kwargs
    video: bool

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return getattr(diffusers, self.model_class)(**self.config).eval()


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


def _t(batch, timestep):
    return torch.full((batch,), float(timestep))


def _wan(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, 4, frames, height, width),
        timestep=_t(batch, timestep),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
    )


def _cogvideox(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, frames, 4, height, width),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        timestep=_t(batch, timestep),
    )


def _hunyuan(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, 4, frames, height, width),
        timestep=_t(batch, timestep),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        encoder_attention_mask=torch.ones(batch, text_len),
        pooled_projections=_randn(gen, batch, POOLED_DIM),
    )


def _ltx(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, frames * height * width, 8),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        timestep=_t(batch, timestep),
        encoder_attention_mask=torch.ones(batch, text_len),
        num_frames=frames,
        height=height,
        width=width,
    )


def _flux(batch, frames, height, width, text_len, timestep, gen):
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


def _sd3(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, 4, height, width),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        pooled_projections=_randn(gen, batch, POOLED_DIM),
        timestep=_t(batch, timestep),
    )


def _pixart(batch, frames, height, width, text_len, timestep, gen):
    return dict(
        hidden_states=_randn(gen, batch, 4, height, width),
        encoder_hidden_states=_randn(gen, batch, text_len, TEXT_DIM),
        timestep=_t(batch, timestep),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def _qwen(batch, frames, height, width, text_len, timestep, gen):
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
            _wan,
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
            _cogvideox,
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
            _hunyuan,
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
            _ltx,
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
            _flux,
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
            _sd3,
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
            _pixart,
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
            _qwen,
            video=False,
        ),
    )
}


def tiny_tokenizer(words: tuple[str, ...] = ()):
    """A word-level tokenizer built locally (no hub): specials, a few words, unknowns map to <unk>."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    base = ("a", "red", "green", "blue", "circle", "square", "moving", "left", "right", "up", "down", "cat")
    vocab = {w: i for i, w in enumerate(("<pad>", "</s>", "<unk>", *dict.fromkeys(base + words)))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _tiny_t5(encoder_class: str, vocab_size: int):
    import transformers

    config_class = transformers.UMT5Config if encoder_class == "UMT5EncoderModel" else transformers.T5Config
    config = config_class(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    return getattr(transformers, encoder_class)(config).eval()


def tiny_wan_pipeline(seed: int = 0):
    """WanPipeline with the tiny Wan transformer, a tiny UMT5 encoder and a tiny Wan VAE."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_t5("UMT5EncoderModel", len(tokenizer)),
        vae=AutoencoderKLWan(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ),
        transformer=TINY_TRANSFORMERS["wan"].build(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def tiny_pixart_pipeline(seed: int = 0):
    """PixArtAlphaPipeline with the tiny PixArt transformer, a tiny T5 encoder and a tiny VAE."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_t5("T5EncoderModel", len(tokenizer)),
        vae=vae,
        transformer=TINY_TRANSFORMERS["pixart"].build(seed),
        scheduler=DPMSolverMultistepScheduler(),
    )
