"""`ShapesT2VPipeline`: a small text-to-video diffusion pipeline made of diffusers classes.

Why these parts:
- `HunyuanVideoTransformer3DModel`: joint text+video attention with 3-D rotary embeddings (the
  structure of real video DiTs, so `sparsediff.apply` treats it like HunyuanVideo), and a pooled
  text projection added to the timestep embedding that modulates every block. Short trials
  with Wan (text only through cross-attention) learned colour but never motion direction.
- Pixel space, 4x4 patches: flat-colour shapes need no VAE, and a VAE would cost training time.
- Three coordinate channels beside the RGB input (CoordConv): each pixel's offset from the frame
  centre (in units of COORD_PX pixels) and its frame's offset from the middle frame (in units of
  COORD_FRAMES frames). Rotary embeddings only tell a token where others are relative to it, but
  the caption fixes absolute positions (a shape moving right is left of the centre in the first
  frames, right of it in the last), so the model must know where the centre and the middle
  frame are, at any size.
- A tiny bidirectional `T5EncoderModel` (Wan's text encoder family): its last hidden states feed
  the joint attention, their mean over the prompt's words the modulation. A causal CLIP encoder
  was tried first: it spread the colour word through every later position, and the direction
  word's output differed by 0.03 between "left" and "right" (4-5 for colour words), so the
  transformer never learned direction. Prompts are padded to a fixed length and the transformer
  sees no mask, so no attention call carries a padding mask (those would have to run dense).
- Rectified flow (`FlowMatchEulerDiscreteScheduler`). `prediction="velocity"`: the transformer
  predicts noise - clip. `prediction="sample"` (JiT, "Back to Basics: Let Denoising Generative
  Models Denoise"): it predicts the clean clip and the velocity is (x_t - clip) / t. A small
  network predicting velocity from 48-value pixel patches must carry the noise through its
  layers; at t = 1 that swamped the caption's mean clip (where a shape moving left starts), and
  the direction word barely moved the prediction there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
from diffusers.utils import BaseOutput
from transformers import T5Config, T5EncoderModel

from sparsediff.pipelines.shapes.data import WORDS

TEXT_LEN = 8  # tokens per prompt, padding included ("a red circle moving up left" is 6 words + eos)
TEXT_DIM = 64
COORD_PX = 16.0  # one unit of the spatial coordinate channels, in pixels (the same at every size)
COORD_FRAMES = 8.0  # one unit of the temporal coordinate channel, in frames
PREDICTIONS = ("velocity", "sample")
MIN_SAMPLE_T = 0.05  # sample prediction divides by t; JiT clips it the same way
TRANSFORMER_CONFIG = dict(
    in_channels=6,  # RGB + 3 coordinate channels
    out_channels=3,
    num_attention_heads=4,
    attention_head_dim=32,
    num_layers=2,
    num_single_layers=2,
    num_refiner_layers=1,
    mlp_ratio=4.0,
    patch_size=4,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=False,
    text_embed_dim=TEXT_DIM,
    pooled_projection_dim=TEXT_DIM,
    rope_theta=256.0,
    rope_axes_dim=(8, 12, 12),
)


def centre_offsets(frames: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[1, 3, F, H, W]: each pixel's (x, y, frame) offset from the centre of the clip (COORD_* units)."""

    def offsets(n: int, unit: float) -> torch.Tensor:
        return (torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2) / unit

    t, y, x = offsets(frames, COORD_FRAMES), offsets(height, COORD_PX), offsets(width, COORD_PX)
    shape = (frames, height, width)
    grid = torch.stack([x[None, None].expand(shape), y[None, :, None].expand(shape), t[:, None, None].expand(shape)])
    return grid[None]


@dataclass
class ShapesT2VOutput(BaseOutput):
    """frames: (batch, frames, height, width, 3) in [0, 1] (numpy for "np", torch for "pt")."""

    frames: np.ndarray | torch.Tensor


def build_tokenizer():
    """Word-level tokenizer over the shapes grammar; pads every prompt to TEXT_LEN."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(("<pad>", "</s>", "<unk>", *WORDS))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=TEXT_LEN
    )


def build_pipeline(seed: int = 0, prediction: str = "velocity") -> ShapesT2VPipeline:
    """The untrained pipeline (random weights, fixed by `seed`)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_config = T5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_DIM,
        d_kv=TEXT_DIM // 4,
        d_ff=4 * TEXT_DIM,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=TEXT_LEN,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return ShapesT2VPipeline(
        tokenizer=tokenizer,
        text_encoder=T5EncoderModel(text_config),
        transformer=HunyuanVideoTransformer3DModel(**TRANSFORMER_CONFIG),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        prediction=prediction,
    )


class ShapesT2VPipeline(DiffusionPipeline):
    """Text to video: "a red circle moving up left" -> frames of a red circle doing just that."""

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, tokenizer, text_encoder, transformer, scheduler, prediction: str = "velocity") -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler
        )
        self.register_to_config(prediction=prediction)

    @property
    def current_timestep(self):
        """The timestep of the step in progress (None between calls), as diffusers' pipelines expose it."""
        return getattr(self, "_current_timestep", None)

    @property
    def patch_size(self) -> int:
        return self.transformer.config.patch_size

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states (B, TEXT_LEN, TEXT_DIM), pooled (B, TEXT_DIM)): the mean over the words and eos."""
        tokens = self.tokenizer(
            [p + " </s>" if p else "</s>" for p in prompts],
            padding="max_length",
            max_length=TEXT_LEN,
            truncation=True,
            return_tensors="pt",
        ).to(self.text_encoder.device)
        hidden = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        mask = tokens.attention_mask.unsqueeze(-1).to(hidden.dtype)
        return hidden, (hidden * mask).sum(1) / mask.sum(1)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """Velocity (noise - clip) at flow time t in [0, 1] (the transformer takes t * 1000)."""
        mask = torch.ones(text.shape[:2], device=text.device)
        coords = centre_offsets(*latents.shape[2:], device=latents.device, dtype=latents.dtype)
        out = self.transformer(
            hidden_states=torch.cat([latents, coords.expand(latents.shape[0], -1, -1, -1, -1)], 1),
            timestep=t * 1000,
            encoder_hidden_states=text,
            encoder_attention_mask=mask,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if self.config.prediction == "sample":
            return (latents - out) / t.clamp(min=MIN_SAMPLE_T).view(-1, 1, 1, 1, 1)
        return out

    def check_size(self, num_frames: int, height: int, width: int) -> None:
        p = self.patch_size
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        for name, value in (("height", height), ("width", width)):
            if value < p or value % p:
                nearest = max(p, round(value / p) * p)
                raise ValueError(f"{name}={value} is not a multiple of the patch size {p}; try {name}={nearest}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 8,
        height: int = 32,
        width: int = 32,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> ShapesT2VOutput | tuple:
        self.check_size(num_frames, height, width)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        cfg = guidance_scale > 1.0
        text, pooled = self.encode_prompt(negatives + prompts if cfg else prompts)  # diffusers' order: uncond first
        device, dtype = self.transformer.device, self.transformer.dtype
        shape = (len(prompts), 3, num_frames, height, width)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        with self.progress_bar(total=num_inference_steps) as progress:
            for i, t in enumerate(self.scheduler.timesteps):
                self._current_timestep = t  # read by diffusers' caches (PyramidAttentionBroadcast, FasterCache)
                batch = torch.cat([latents, latents]) if cfg else latents
                sigma = (t / self.scheduler.config.num_train_timesteps).expand(batch.shape[0]).to(dtype)
                # The context diffusers' cache hooks (and sparsediff's step tracking) key their state by.
                context = dict(step_index=i, num_inference_steps=num_inference_steps, timestep=t, sigma=float(sigma[0]))
                with self.transformer.cache_context("uncond_cond" if cfg else "cond", **context):
                    velocity = self.predict(batch, sigma, text.to(dtype), pooled.to(dtype))
                if cfg:
                    uncond, cond = velocity.chunk(2)
                    velocity = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                progress.update()
        self._current_timestep = None
        frames = ((latents.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)  # (B, F, H, W, 3)
        if output_type == "np":
            frames = frames.cpu().numpy()
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        self.maybe_free_model_hooks()
        return ShapesT2VOutput(frames=frames) if return_dict else (frames,)
