"""Tiny configs and inputs for diffusers transformer classes beyond the built-in tiny pipelines:
(config, inputs(generator)) per class, each small enough to run in well under a second."""

import torch


def _ids(height: int, width: int, axes: int = 3) -> torch.Tensor:
    """Flux-style position ids of a packed latent: rows of (0, h, w[, 0])."""
    h, w = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows = [torch.zeros(height * width), h.flatten(), w.flatten()] + [torch.zeros(height * width)] * (axes - 3)
    return torch.stack(rows, -1).float()


def _flux_like(extra_inputs=None, axes: int = 3):
    def inputs(gen):
        return {
            "hidden_states": torch.randn(1, 64, 16, generator=gen),
            "encoder_hidden_states": torch.randn(1, 8, 16, generator=gen),
            "timestep": torch.tensor([0.5]),
            "img_ids": _ids(8, 8, axes),
            "txt_ids": torch.zeros(8, axes),
            **(extra_inputs(gen) if extra_inputs else {}),
        }

    return inputs


def _text(gen, length: int = 8, dim: int = 16) -> torch.Tensor:
    return torch.randn(1, length, dim, generator=gen)


CASES = {
    "AllegroTransformer3DModel": (
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=1,
             cross_attention_dim=16, sample_width=8, sample_height=8, sample_frames=8, caption_channels=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 2, 8, 8, generator=gen),
                     "encoder_hidden_states": torch.randn(1, 4, 16, generator=gen), "timestep": torch.tensor([5])},
    ),
    "CosmosTransformer3DModel": (
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=1,
             text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), concat_padding_mask=False,
             encoder_hidden_states_channels=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=gen), "timestep": torch.tensor([0.5]),
                     "encoder_hidden_states": _text(gen), "fps": 24},
    ),
    "DiTTransformer2DModel": (
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1, sample_size=16,
             patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "timestep": torch.tensor([5]),
                     "class_labels": torch.tensor([1])},
    ),
    "HunyuanImageTransformer2DModel": (
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
             num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=16, rope_axes_dim=(4, 4)),
        lambda gen: {"hidden_states": torch.randn(1, 4, 8, 8, generator=gen), "timestep": torch.tensor([5.0]),
                     "encoder_hidden_states": _text(gen), "encoder_attention_mask": torch.ones(1, 8)},
    ),
    "HunyuanVideo15Transformer3DModel": (
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
             num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=16,
             image_embed_dim=16, rope_axes_dim=(2, 2, 4), target_size=32, task_type="t2v"),
        lambda gen: {"hidden_states": torch.randn(1, 4, 2, 4, 4, generator=gen), "timestep": torch.tensor([5.0]),
                     "encoder_hidden_states": _text(gen), "encoder_attention_mask": torch.ones(1, 8),
                     "encoder_hidden_states_2": _text(gen), "encoder_attention_mask_2": torch.ones(1, 8),
                     "image_embeds": torch.zeros(1, 4, 16)},
    ),
    # spatial attention per frame and temporal attention per position: no layout of the whole grid
    "LatteTransformer3DModel": (
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
             sample_size=8, patch_size=2, cross_attention_dim=16, caption_channels=16, video_length=3),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 8, 8, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_hidden_states": torch.randn(1, 4, 16, generator=gen)},
    ),
    # joint attention per sample over [visual; valid text] (MochiAttention, no set_processor)
    "MochiTransformer3DModel": (
        dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1, pooled_projection_dim=16,
             in_channels=4, text_embed_dim=16, time_embed_dim=4, activation_fn="swiglu", max_sequence_length=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 8, 8, generator=gen),
                     "encoder_hidden_states": torch.randn(1, 16, 16, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_attention_mask": torch.ones(1, 16)},
    ),
    "WanVACETransformer3DModel": (
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=8, ffn_dim=16, num_layers=2, rope_max_seq_len=32, vace_layers=[0],
             vace_in_channels=8),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_hidden_states": _text(gen),
                     "control_hidden_states": torch.randn(1, 8, 3, 16, 16, generator=gen)},
    ),
    "DreamLiteTransformer2DModel": (
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1, norm_num_groups=1,
             cross_attention_dim=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen)},
    ),
    "HeliosTransformer3DModel": (
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=8, ffn_dim=16, num_layers=1, rope_dim=(2, 2, 4)),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_hidden_states": _text(gen)},
    ),
    "AuraFlowTransformer2DModel": (
        dict(sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
             attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
             out_channels=4, pos_embed_max_size=64),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([5])},
    ),
    "BriaTransformer2DModel": (
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=[4, 6, 6]),
        _flux_like(),
    ),
    "ChromaTransformer2DModel": (
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 6, 6), approximator_num_channels=8,
             approximator_hidden_dim=16, approximator_layers=1),
        _flux_like(),
    ),
    "ChronoEditTransformer3DModel": (
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=8, ffn_dim=16, num_layers=1, rope_max_seq_len=32),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_hidden_states": _text(gen)},
    ),
    "Flux3Transformer2DModel": (
        dict(in_channels=16, cond_in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, timestep_channels=8, axes_dims_rope=(4, 4, 4, 4)),
        _flux_like(axes=4),
    ),
    "Transformer2DModel": (
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1, norm_num_groups=1,
             cross_attention_dim=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen)},
    ),
    "CogView3PlusTransformer2DModel": (
        dict(patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2, out_channels=4,
             text_embed_dim=16, time_embed_dim=8, condition_dim=2, pos_embed_max_size=16, sample_size=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([5]), "original_size": torch.tensor([[16, 16]]),
                     "target_size": torch.tensor([[16, 16]]), "crop_coords": torch.tensor([[0, 0]])},
    ),
    "CogView4Transformer2DModel": (
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
             text_embed_dim=16, time_embed_dim=8, condition_dim=2, pos_embed_max_size=16, sample_size=16,
             rope_axes_dim=(4, 4)),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([5]), "original_size": torch.tensor([[16, 16]]),
                     "target_size": torch.tensor([[16, 16]]), "crop_coords": torch.tensor([[0, 0]])},
    ),
    "ConsisIDTransformer3DModel": (
        dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=4,
             text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=8, cross_attn_interval=1, is_train_face=False),
        lambda gen: {"hidden_states": torch.randn(1, 3, 4, 16, 16, generator=gen),
                     "encoder_hidden_states": _text(gen), "timestep": torch.tensor([5])},
    ),
    "EasyAnimateTransformer3DModel": (
        dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=16,
             sample_height=16, num_layers=1, mmdit_layers=1, time_embed_dim=8, text_embed_dim=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 2, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([5])},
    ),
    "Flux2Transformer2DModel": (
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, timestep_guidance_channels=8, axes_dims_rope=(4, 4, 4, 4)),
        _flux_like(lambda gen: {"guidance": torch.tensor([3.5])}, axes=4),
    ),
    "LongCatImageTransformer2DModel": (
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6]),
        _flux_like(),
    ),
    "Lumina2Transformer2DModel": (
        dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=16, num_layers=1, num_refiner_layers=1,
             num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(2, 2, 4), axes_lens=(32, 32, 32),
             cap_feat_dim=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "timestep": torch.tensor([0.5]),
                     "encoder_hidden_states": _text(gen), "encoder_attention_mask": torch.ones(1, 8, dtype=torch.bool)},
    ),
    "MotifVideoTransformer3DModel": (
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
             num_single_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16, rope_axes_dim=(2, 2, 4)),
        lambda gen: {"hidden_states": torch.randn(1, 4, 2, 8, 8, generator=gen), "timestep": torch.tensor([5.0]),
                     "encoder_hidden_states": _text(gen)},
    ),
    "OvisImageTransformer2DModel": (
        dict(patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
             num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(4, 6, 6)),
        _flux_like(),
    ),
    # image queries attend over [text; image] keys (PRX) or [image; text] (NucleusMoE): no one layout
    "NucleusMoEImageTransformer2DModel": (
        dict(patch_size=2, in_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=16, axes_dims_rope=(4, 6, 6), moe_enabled=False),
        lambda gen: {"hidden_states": torch.randn(1, 16, 16, generator=gen), "img_shapes": [(1, 4, 4)],
                     "encoder_hidden_states": _text(gen), "timestep": torch.tensor([0.5])},
    ),
    "PRXTransformer2DModel": (
        dict(in_channels=4, patch_size=2, context_in_dim=16, hidden_size=16, mlp_ratio=2.0, num_heads=2, depth=1,
             axes_dim=[4, 4]),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "timestep": torch.tensor([0.5]),
                     "encoder_hidden_states": _text(gen)},
    ),
    "SanaTransformer2DModel": (
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
             num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
             sample_size=16, patch_size=1),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([5])},
    ),
    "SanaVideoTransformer3DModel": (
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
             num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
             sample_size=16, patch_size=(1, 2, 2), rope_max_seq_len=32),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([5])},
    ),
    "SkyReelsV2Transformer3DModel": (
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=8, ffn_dim=16, num_layers=1, rope_max_seq_len=32),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_hidden_states": _text(gen)},
    ),
}  # fmt: skip
