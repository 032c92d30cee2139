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


def _lumina_next_rope(size: int) -> torch.Tensor:
    """LuminaNext's precomputed 2-D rotary table for a size x size grid of head dim 8 (complex pairs)."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    return get_2d_rotary_pos_embed_lumina(8, 4 * size, 4 * size)


def _omnigen_mask(text: int, image: int) -> torch.Tensor:
    """OmniGen's float mask: causal over the text, the time token and image attend among themselves."""
    n = text + image
    mask = torch.tril(torch.ones(n, n))
    mask[text:, text:] = 1
    return mask[None]


def _minimax_packing(text: int, audio: int, video: int) -> dict:
    """MiniMax-H3's packed layout: text rows, then audio, then video, with their tags and positions."""
    n = text + audio + video
    video_rows = torch.arange(text + audio, n)
    tags = torch.cat([torch.ones(text), torch.full((audio,), 2), torch.zeros(video)]).long()
    positions = torch.zeros(n, 3)
    positions[:, 0] = torch.arange(n)
    positions[video_rows, 1:] = _ids(8, 8)[:, 1:]
    return {"timestep": torch.tensor([0.7, 0.3]), "timestep_indices": (tags == 2).long(), "token_tags": tags,
            "position_ids": positions, "video_indices": video_rows, "audio_indices": torch.arange(text, text + audio),
            "text_indices": torch.arange(text)}  # fmt: skip


def _sana_wm_refiner(config: dict):
    """SANA-WM's refiner takes patchified tokens and the rotary table its pipeline builds for the window's
    frames (2 x 8 x 8 here); the table has no weights, so a model of the same config builds it."""

    def inputs(gen):
        import diffusers

        rope = diffusers.SanaWMLTX2RefinerTransformer3DModel(**config).build_rotary_emb_for_absolute_positions(
            1, [0, 1], 8, 8, torch.device("cpu"), 25.0
        )
        return {"hidden_states": torch.randn(1, 128, 4, generator=gen), "encoder_hidden_states": _text(gen),
                "timestep": torch.full((1, 128), 500.0), "video_rotary_emb": rope}  # fmt: skip

    return config, inputs


def _wan_animate2_cache(layers: int):
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    return WanAnimate2KVCache(layers)


CASES = {
    # already sparse: its own NABLA attention over 8 x 8 local tiles
    "Kandinsky6SRTransformer3DModel": (
        dict(in_visual_dim=4, out_visual_dim=4, time_dim=16, patch_size=(1, 1, 1), model_dim=16, ff_dim=32,
             num_visual_blocks=1, axes_dims=(4, 2, 2), nabla_window=(3, 3, 3)),
        lambda gen: {"hidden_states": torch.randn(1, 2, 16, 16, 9, generator=gen), "timestep": torch.tensor([500.0])},
    ),
    "Kandinsky6Transformer3DModel": (
        dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
             model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=1, axes_dims=(2, 2, 4), visual_cond=False,
             in_audio_dim=4, out_audio_dim=4, model_dim_a=16, time_dim_a=16, ff_dim_a=32, axes_dims_a=(8,)),
        lambda gen: {"hidden_states": torch.randn(1, 2, 16, 16, 4, generator=gen), "encoder_hidden_states": _text(gen),
                     "pooled_projections": torch.randn(1, 8, generator=gen), "timestep": torch.tensor([500.0]),
                     "audio_hidden_states": torch.randn(1, 128, 4, generator=gen)},  # as long as the video
    ),
    # the generation pass attends over [cached reference keys; its own]; the reference pass takes lists
    "WanAnimate2Transformer3DModel": (
        dict(patch_size=(1, 2, 2), text_len=8, in_dim=36, dim=32, ffn_dim=64, freq_dim=16, text_dim=16, out_dim=16,
             num_heads=2, num_layers=1),
        lambda gen: {"hidden_states": [torch.randn(16, 2, 8, 8, generator=gen)], "timestep": torch.tensor([1.0]),
                     "encoder_hidden_states": [torch.randn(8, 16, generator=gen)],
                     "condition_latents": [torch.randn(20, 2, 8, 8, generator=gen)],
                     "encoder_hidden_states_image": torch.randn(1, 4, 1280, generator=gen),
                     "kv_cache": _wan_animate2_cache(1), "kv_cache_mode": "extract", "seq_len": 32,
                     "offset_grid_sizes": torch.tensor([[2, 4, 4]])},
    ),
    # causal text queries, then image queries over [text; image] keys
    "Cosmos3OmniTransformer": (
        dict(head_dim=8, hidden_act="relu2", hidden_size=16, intermediate_size=32, latent_channel=2,
             latent_patch_size=1, num_attention_heads=2, num_hidden_layers=1, num_key_value_heads=1,
             patch_latent_dim=2, qk_norm_for_text=False, rope_axes_dim=[2, 1, 1], rope_theta=1e8, vocab_size=32),
        lambda gen: {"input_ids": torch.tensor([1, 2]), "text_indexes": torch.tensor([0, 1]),
                     "position_ids": torch.zeros(3, 18, dtype=torch.long), "und_len": 2, "sequence_length": 18,
                     "vision_tokens": [torch.randn(1, 2, 1, 4, 4, generator=gen)], "vision_token_shapes": [(1, 4, 4)],
                     "vision_sequence_indexes": torch.arange(2, 18), "vision_mse_loss_indexes": torch.arange(2, 18),
                     "vision_timesteps": torch.ones(16), "vision_noisy_frame_indexes": [torch.tensor([0])]},
    ),
    "Kandinsky5Transformer3DModel": (
        dict(in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
             model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=1, axes_dims=(2, 2, 4)),
        lambda gen: {"hidden_states": torch.randn(1, 2, 16, 16, 4, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([500.0]), "pooled_projections": torch.randn(1, 8, generator=gen),
                     "visual_rope_pos": [torch.arange(2), torch.arange(8), torch.arange(8)],
                     "text_rope_pos": torch.arange(8)},
    ),
    "LTX2VideoTransformer3DModel": (
        dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
             cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
             audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1, caption_channels=16),
        lambda gen: {"hidden_states": torch.randn(1, 128, 4, generator=gen),
                     "audio_hidden_states": torch.randn(1, 9, 4, generator=gen),
                     "encoder_hidden_states": _text(gen), "audio_encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([500.0]), "encoder_attention_mask": torch.ones(1, 8, dtype=torch.bool),
                     "num_frames": 2, "height": 8, "width": 8, "audio_num_frames": 9, "fps": 25.0},
    ),
    "AnyFlowTransformer3DModel": (
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32),
        lambda gen: {"hidden_states": torch.randn(1, 2, 4, 16, 16, generator=gen),
                     "timestep": torch.tensor([[500.0, 500.0]]), "r_timestep": torch.tensor([[250.0, 250.0]]),
                     "encoder_hidden_states": _text(gen)},
    ),
    "HiDreamImageTransformer2DModel": (
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
             num_attention_heads=2, caption_channels=[8, 4], text_emb_dim=8, num_routed_experts=2,
             num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1)),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen),
                     "encoder_hidden_states_t5": torch.randn(1, 8, 8, generator=gen),
                     "encoder_hidden_states_llama3": torch.randn(2, 1, 8, 4, generator=gen),
                     "pooled_embeds": torch.randn(1, 8, generator=gen), "timesteps": torch.tensor([5])},
    ),
    # an (N, N) mask, causal over the text (its self-attention modules flag themselves as cross-attention)
    "OmniGenTransformer2DModel": (
        dict(hidden_size=16, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32, num_layers=1,
             pad_token_id=0, vocab_size=100, in_channels=4, time_step_dim=4,
             rope_scaling={"long_factor": [1, 2], "short_factor": [1, 2]}),
        lambda gen: {"hidden_states": torch.randn(1, 4, 8, 8, generator=gen), "timestep": torch.tensor([0.5]),
                     "input_ids": torch.randint(1, 100, (1, 8), generator=gen), "input_img_latents": [],
                     "input_image_sizes": {}, "attention_mask": _omnigen_mask(8, 17),
                     "position_ids": torch.arange(25)[None]},
    ),
    # packed history latents (other patch sizes) before the grid
    "HunyuanVideoFramepackTransformer3DModel": (
        dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
             num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
             text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
             has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 8, 8, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_hidden_states": _text(gen), "pooled_projections": torch.randn(1, 8, generator=gen),
                     "encoder_attention_mask": torch.ones(1, 8), "guidance": torch.tensor([5]),
                     "image_embeds": _text(gen), "indices_latents": torch.arange(3.0),
                     "latents_clean": torch.randn(1, 4, 2, 8, 8, generator=gen),
                     "indices_latents_clean": torch.arange(2.0),
                     "latents_history_2x": torch.randn(1, 4, 2, 8, 8, generator=gen),
                     "indices_latents_history_2x": torch.arange(2.0),
                     "latents_history_4x": torch.randn(1, 4, 8, 8, 8, generator=gen),
                     "indices_latents_history_4x": torch.arange(8.0)},
    ),
    # frame-causal attention through flex_attention's BlockMask (no SDPA call to take over)
    "AnyFlowFARTransformer3DModel": (
        dict(patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=3, num_attention_heads=2,
             attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
             num_layers=1, rope_max_seq_len=32),
        lambda gen: {"hidden_states": torch.randn(1, 4, 4, 16, 16, generator=gen),
                     "timestep": torch.full((1, 4), 500.0), "r_timestep": torch.full((1, 4), 250.0),
                     "encoder_hidden_states": _text(gen), "chunk_partition": [2, 2]},
    ),
    # text and image tokens packed in any order, placed by a per-token indicator, under a segment mask
    "Ideogram4Transformer2DModel": (
        dict(in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2, intermediate_size=32,
             adaln_dim=16, llm_features_dim=16, mrope_section=(2, 1, 1)),
        lambda gen: {"hidden_states": torch.randn(1, 72, 16, generator=gen),
                     "encoder_hidden_states": torch.randn(1, 72, 16, generator=gen), "timestep": torch.tensor([0.5]),
                     "position_ids": torch.cat([torch.zeros(8, 3), _ids(8, 8)]).long()[None],
                     "segment_ids": torch.ones(1, 72, dtype=torch.long),
                     "indicator": torch.tensor([[3] * 8 + [2] * 64])},
    ),
    # text, audio and video rows scattered into one sequence by index tensors
    "MiniMaxH3Transformer3DModel": (
        dict(num_attention_heads=2, attention_head_dim=16, hidden_size=24, num_layers=1, num_refiner_layers=1,
             ffn_dim=32, in_channels=4, audio_in_channels=6, patch_size=(1, 2, 2), text_dim=8, freq_dim=8,
             time_embed_hidden_dim=24, time_embed_dim=16, rope_freq_dim=2),
        lambda gen: {"hidden_states": torch.randn(1, 64, 16, generator=gen),
                     "audio_hidden_states": torch.randn(1, 6, 6, generator=gen),
                     "encoder_hidden_states": torch.randn(1, 4, 8, generator=gen), **_minimax_packing(4, 6, 64)},
    ),
    # per-sample lists of images and captions, each padded to a multiple of 32 tokens
    "ZImageTransformer2DModel": (
        dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=16, n_layers=1, n_refiner_layers=1,
             n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[2, 2, 4], axes_lens=[256, 32, 32]),
        lambda gen: {"x": [torch.randn(16, 1, 16, 16, generator=gen)],
                     "cap_feats": [torch.randn(16, 16, generator=gen)],
                     "t": torch.tensor([0.5])},
    ),
    # target and reference images of different sizes packed into one padded sequence
    "JoyImageEditPlusTransformer3DModel": (
        dict(patch_size=[1, 2, 2], in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=1,
             rope_dim_list=[4, 6, 6], theta=256),
        lambda gen: {"hidden_states": torch.randn(1, 80, 4, 1, 2, 2, generator=gen), "timestep": torch.tensor([0.5]),
                     "encoder_hidden_states": _text(gen), "shape_list": [[(1, 8, 8), (1, 4, 4)]]},
    ),
    "HunyuanDiT2DModel": (
        dict(sample_size=16, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
             cross_attention_dim=16, cross_attention_dim_t5=16, pooled_projection_dim=4, hidden_size=16, text_len=8,
             text_len_t5=8, activation_fn="gelu-approximate"),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "text_embedding_mask": torch.ones(1, 8), "encoder_hidden_states_t5": _text(gen),
                     "text_embedding_mask_t5": torch.ones(1, 8), "timestep": torch.tensor([5.0]),
                     "image_meta_size": torch.tensor([[16.0, 16, 16, 16, 0, 0]]), "style": torch.zeros(1, dtype=int),
                     "image_rotary_emb": [torch.ones(64, 8), torch.zeros(64, 8)]},
    ),
    "LuminaNextDiT2DModel": (
        dict(sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=1, num_attention_heads=3,
             num_kv_heads=1, multiple_of=16, cross_attention_dim=16),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([0.5]), "encoder_mask": torch.ones(1, 8),
                     "image_rotary_emb": _lumina_next_rope(8), "cross_attention_kwargs": {}},
    ),
    "WanAnimateTransformer3DModel": (
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=12, latent_channels=4,
             out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, image_dim=16, rope_max_seq_len=32,
             motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8,
             motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
             inject_face_latents_blocks=1),
        lambda gen: {"hidden_states": torch.randn(1, 12, 3, 16, 16, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_hidden_states": _text(gen), "encoder_hidden_states_image": _text(gen),
                     "pose_hidden_states": torch.randn(1, 4, 2, 16, 16, generator=gen),
                     "face_pixel_values": torch.randn(1, 3, 5, 16, 16, generator=gen)},
    ),
    "Krea2Transformer2DModel": (
        dict(in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=32, timestep_embed_dim=8, text_hidden_dim=16, num_text_layers=2,
             text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=16,
             num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 2, 2)),
        lambda gen: {"hidden_states": torch.randn(1, 64, 16, generator=gen),
                     "encoder_hidden_states": torch.randn(1, 8, 2, 16, generator=gen), "timestep": torch.tensor([0.5]),
                     "position_ids": torch.cat([torch.zeros(8, 3), _ids(8, 8)]),
                     "encoder_attention_mask": torch.tensor([[True] * 6 + [False] * 2])},
    ),
    "ErnieImageTransformer2DModel": (
        dict(hidden_size=16, num_attention_heads=2, num_layers=1, ffn_hidden_size=16, in_channels=4, out_channels=4,
             patch_size=2, text_in_dim=16, rope_theta=256, rope_axes_dim=(2, 2, 4), qk_layernorm=True),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "timestep": torch.tensor([0.5]),
                     "text_bth": _text(gen), "text_lens": torch.tensor([6])},
    ),
    "GlmImageTransformer2DModel": (
        dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
             text_embed_dim=16, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=64),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "encoder_hidden_states": _text(gen),
                     "prior_token_id": torch.randint(64, (1, 64), generator=gen),
                     "prior_token_drop": torch.tensor([False]), "timestep": torch.tensor([5]),
                     "target_size": torch.tensor([[16.0, 16.0]]), "crop_coords": torch.tensor([[0.0, 0.0]])},
    ),
    "BriaFiboTransformer2DModel": (
        dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
             num_attention_heads=2, joint_attention_dim=16, text_encoder_dim=16, axes_dims_rope=[0, 4, 4]),
        _flux_like(lambda gen: {"text_encoder_layers": [_text(gen), _text(gen)]}),
    ),
    "BriaFibo2Transformer2DModel": (
        dict(in_channels=4, patch_size=2, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, cap_feat_dim=16,
             injection_layer_ids=(1,), perceiver_num_layers=1, min_num_gist_tokens=8, max_num_gist_tokens=16,
             gist_step=8, gist_min_text_len=4, gist_max_text_len=16, axes_dims=(4, 6, 6), axes_lens=(32, 16, 16)),
        lambda gen: {"hidden_states": torch.randn(1, 4, 16, 16, generator=gen), "timestep": torch.tensor([0.5]),
                     "encoder_hidden_states": torch.randn(1, 2, 8, 16, generator=gen)},
    ),
    # the items of a (B, items, C, F, H, W) input are laid out as frames
    "JoyImageEditTransformer3DModel": (
        dict(patch_size=[1, 2, 2], in_channels=4, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=1,
             rope_dim_list=[4, 6, 6], theta=256),
        lambda gen: {"hidden_states": torch.randn(1, 2, 4, 1, 16, 16, generator=gen), "timestep": torch.tensor([0.5]),
                     "encoder_hidden_states": _text(gen)},
    ),
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
    # text, then the target image's 16 tokens (4 vision-language slots of 2 x 2 latent tokens)
    "QwenImage21Transformer2DModel": (
        dict(in_channels=4, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
             context_in_dim=16, mlp_ratio=2, axes_dims_rope=(4, 6, 6)),
        lambda gen: {"hidden_states": torch.randn(1, 16, 4, generator=gen), "encoder_hidden_states": _text(gen),
                     "timestep": torch.tensor([0.5]), "img_shapes": [[(1, 4, 4)]],
                     "img_mask": torch.tensor([[False] * 8 + [True] * 4])},
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
    "SanaWMTransformer3DModel": (
        dict(in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2, patch_size=(1, 2, 2),
             softmax_every_n=2, linear_head_dim=16, caption_channels=16, use_chunk_plucker_post_attn=False,
             mlp_ratio=2.0),
        lambda gen: {"hidden_states": torch.randn(1, 4, 2, 16, 16, generator=gen), "timestep": torch.tensor([[[5, 5]]]),
                     "encoder_hidden_states": torch.randn(1, 1, 8, 16, generator=gen),
                     "encoder_attention_mask": torch.ones(1, 8)},
    ),
    "SanaWMLTX2RefinerTransformer3DModel": _sana_wm_refiner(
        dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
             cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
             audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1, caption_channels=16)
    ),
    "SkyReelsV2Transformer3DModel": (
        dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
             text_dim=16, freq_dim=8, ffn_dim=16, num_layers=1, rope_max_seq_len=32),
        lambda gen: {"hidden_states": torch.randn(1, 4, 3, 16, 16, generator=gen), "timestep": torch.tensor([5]),
                     "encoder_hidden_states": _text(gen)},
    ),
}  # fmt: skip
