"""One small adapter per diffusers model family: where text sits and the latent grid.

The transformer's forward arguments give the visual grid after patchify; where text tokens
sit inside self/joint attention is a property of the family, read from each model's attention processor:

| family | text inside self/joint attention |
|---|---|
| Wan 2.1/2.2, LTX-Video, PixArt | none (separate cross-attention) |
| CogVideoX, Flux, QwenImage | prefix |
| HunyuanVideo (and 1.5), HunyuanImage, Motif-Video, SD3, Mochi (per sample, its valid text) | suffix |
| HiDream (a different length per block), ERNIE-Image, JoyImage-Edit | suffix |
| AuraFlow, Bria, Bria-FIBO, Chroma, CogView3Plus/4, ConsisID, EasyAnimate, Flux2/3, GLM-Image, Krea2, | prefix |
| LongCat-Image, Lumina2, Ovis-Image, OmniGen, Bria-FIBO 2 (its gist tokens) | |
| SkyReels-V2, ChronoEdit, HunyuanDiT, Lumina-Next, Wan-Animate, AnyFlow, Kandinsky 5, LTX-2 (video) | none |

`SUPPORT` below lists every transformer class diffusers exports and what `apply` does with it.

A model class not listed uses the generic adapter: a 5-D (B, C, F, H, W) or 4-D (B, C, H, W)
latent divided by the config's patch sizes, text position unknown (calls that hold text then
run dense, with a warning).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sparsediff.layout import TokenLayout

Tensor = torch.Tensor
Grid = tuple[int, int, int]


@dataclass(frozen=True)
class Family:
    name: str
    text: str  # "none", "prefix", "suffix" or "unknown"
    grid: Callable[[Any, dict], Grid | None]
    text_only: tuple[str, ...] = ()  # module-name prefixes of attention over text alone (HunyuanVideo's refiner)
    cross_flag: bool = True  # False where `is_cross_attention` is set on self-attention (OmniGen)

    def role(self, name: str, module) -> str:
        """What an attention module computes: "cross" (queries attend to text keys), "text" (attention
        among text tokens alone), "audio" (the audio stream of LTX-2 and Kandinsky 6) or "self" (over
        the visual tokens, with text inside when the family puts it there). Taken from the model,
        never from sequence lengths: at some sizes the text is exactly as long as the visual
        sequence (Wan: 512 text tokens, 512 latent tokens)."""
        if name.startswith(self.text_only):
            return "text"
        parts = name.split(".")
        # LTX-2's `audio_attn1`, Kandinsky 6's `audio_dec_block.self_attention`
        if any(part.startswith("audio_") for part in parts):
            return "audio"
        leaf = parts[-1]
        if (self.cross_flag and getattr(module, "is_cross_attention", False)) or leaf == "attn2" or "cross" in leaf:
            return "cross"  # `attn2` in every block that has one (LTX, PixArt, Wan); Kandinsky's `*cross_attention`
        return "self"

    def layout(self, grid: Grid, n: int) -> tuple[TokenLayout | None, str | None]:
        """The layout of an n-token self/joint attention call over `grid`: the visual tokens and
        the rest as text on this family's side; (None, why) where the text's place is unknown."""
        frames, height, width = grid
        text = n - frames * height * width
        if text < 0:
            return None, None
        if text and self.text not in ("prefix", "suffix"):
            return None, (
                f"{self.name}: attention over {n} tokens holds {text} non-visual tokens but sparsediff does not "
                "know where this model puts text; those calls run dense"
            )
        side = {"text_prefix": text} if self.text == "prefix" else {"text_suffix": text}
        return TokenLayout(frames=frames, height=height, width=width, **side), None


def patch_sizes(config) -> tuple[int, int, int]:
    """(frames, height, width) patch of a diffusers transformer config: `patch_size` is an int or a
    (t, h, w) tuple (Wan); `patch_size_t` where the family has one; a missing size is 1."""
    patch = getattr(config, "patch_size", None)
    if isinstance(patch, (tuple, list)):
        return int(patch[0]), int(patch[-2]), int(patch[-1])
    spatial = 1 if patch is None else int(patch)
    temporal = getattr(config, "patch_size_t", None)
    return 1 if temporal is None else int(temporal), spatial, spatial


def _channels_first_grid(model, args: dict) -> Grid | None:
    """(B, C, F, H, W) or (B, C, H, W) latents, patchified by the config's patch sizes."""
    x = args.get("hidden_states")
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
        return None
    pt, ph, pw = patch_sizes(model.config)
    frames = x.shape[2] if x.dim() == 5 else 1
    return math.ceil(frames / pt), x.shape[-2] // ph, x.shape[-1] // pw


def _cogvideox_grid(model, args: dict) -> Grid | None:
    x = args.get("hidden_states")  # (B, F, C, H, W)
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        return None
    pt, ph, pw = patch_sizes(model.config)
    return math.ceil(x.shape[1] / pt), x.shape[-2] // ph, x.shape[-1] // pw


def _kandinsky5_grid(model, args: dict) -> Grid | None:
    """(B, F, H, W, C) latents in row-major order; None in NABLA's block-local (fractal) order."""
    x, sparse = args.get("hidden_states"), args.get("sparse_params") or {}
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or sparse.get("to_fractal"):
        return None
    pt, ph, pw = patch_sizes(model.config)
    return x.shape[1] // pt, x.shape[2] // ph, x.shape[3] // pw


def _ltx_grid(model, args: dict) -> Grid | None:
    if args.get("num_frames") is None:
        return None
    pt, ph, pw = patch_sizes(model.config)
    return int(args["num_frames"]) // pt, int(args["height"]) // ph, int(args["width"]) // pw


def _grid_of_ids(ids: torch.Tensor) -> Grid | None:
    """(1, H, W) of (N, 3) position rows (index, h, w) that cover an H x W grid once, row-major;
    None for anything else (extra reference images, another order)."""
    h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    if h * w != ids.shape[0]:
        return None
    order = torch.arange(h * w, device=ids.device)
    return (1, h, w) if torch.equal(ids[:, 1].long() * w + ids[:, 2].long(), order) else None


def _flux_grid(model, args: dict) -> Grid | None:
    ids = args.get("img_ids")  # (N, 3) rows of (index, h, w)
    if not isinstance(ids, torch.Tensor):
        return None
    return _grid_of_ids(ids[0] if ids.dim() == 3 else ids)


def _krea2_grid(model, args: dict) -> Grid | None:
    """Krea2's `position_ids` hold the text rows, then the image rows (t, h, w)."""
    ids, x = args.get("position_ids"), args.get("hidden_states")
    if not isinstance(ids, torch.Tensor) or not isinstance(x, torch.Tensor) or x.dim() != 3:
        return None
    return _grid_of_ids(ids[-x.shape[1] :])


def _joyimage_grid(model, args: dict) -> Grid | None:
    """(B, C, F, H, W), or (B, items, C, F, H, W) whose items JoyImage lays out as frames."""
    x = args.get("hidden_states")
    if isinstance(x, torch.Tensor) and x.dim() == 6:
        args = {"hidden_states": x.transpose(1, 2).flatten(2, 3)}
    return _channels_first_grid(model, args)


def _bria_fibo2_grid(model, args: dict) -> Grid | None:
    """(B, C, H, W) latents; None with images to edit, whose tokens follow the grid's in one stream."""
    return None if args.get("context_latents") else _channels_first_grid(model, args)


def _qwen_grid(model, args: dict) -> Grid | None:
    shapes = args.get("img_shapes")
    if not shapes:
        return None
    per_sample = shapes[0]
    if isinstance(per_sample, list):
        if len(per_sample) != 1:
            return None  # several images in one sequence (editing): unknown layout
        per_sample = per_sample[0]
    return tuple(int(s) for s in per_sample)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("WanTransformer3DModel", "none", _channels_first_grid),
        Family("WanVACETransformer3DModel", "none", _channels_first_grid),
        Family("CogVideoXTransformer3DModel", "prefix", _cogvideox_grid),
        Family("HunyuanVideoTransformer3DModel", "suffix", _channels_first_grid, ("context_embedder.",)),
        Family("HunyuanVideo15Transformer3DModel", "suffix", _channels_first_grid, ("context_embedder.",)),
        Family("HunyuanImageTransformer2DModel", "suffix", _channels_first_grid, ("context_embedder.",)),
        Family("MotifVideoTransformer3DModel", "suffix", _channels_first_grid, ("context_embedder.",)),
        Family("LTXVideoTransformer3DModel", "none", _ltx_grid),
        Family("LTX2VideoTransformer3DModel", "none", _ltx_grid),  # its audio stream: role "audio", dense
        Family("AnyFlowTransformer3DModel", "none", _cogvideox_grid),
        Family("Kandinsky5Transformer3DModel", "none", _kandinsky5_grid, ("text_transformer_blocks.",)),
        Family("Kandinsky6Transformer3DModel", "none", _kandinsky5_grid,
               ("video_text_transformer_blocks.", "audio_text_transformer_blocks.")),
        Family("HiDreamImageTransformer2DModel", "suffix", _channels_first_grid),  # non-square: padding + text last
        # dense: an (N, N) mask, causal over text (the module flags its self-attention as cross-attention)
        Family("OmniGenTransformer2DModel", "prefix", _channels_first_grid, cross_flag=False),
        # dense: packed history latents of other patch sizes before the grid
        Family("HunyuanVideoFramepackTransformer3DModel", "unknown", _channels_first_grid, ("context_embedder.",)),
        # Mochi attends per sample over [visual; that sample's valid text]: a suffix of its own length
        Family("MochiTransformer3DModel", "suffix", _channels_first_grid),
        Family("FluxTransformer2DModel", "prefix", _flux_grid),
        Family("SD3Transformer2DModel", "suffix", _channels_first_grid),
        Family("PixArtTransformer2DModel", "none", _channels_first_grid),
        Family("QwenImageTransformer2DModel", "prefix", _qwen_grid),
        # text first in joint attention (read from each model's attention processor)
        *(Family(name, "prefix", _flux_grid) for name in ("ChromaTransformer2DModel", "BriaTransformer2DModel",
          "LongCatImageTransformer2DModel", "OvisImageTransformer2DModel", "Flux2Transformer2DModel",
          "Flux3Transformer2DModel")),
        *(Family(name, "prefix", _channels_first_grid) for name in ("AuraFlowTransformer2DModel",
          "CogView3PlusTransformer2DModel", "CogView4Transformer2DModel", "EasyAnimateTransformer3DModel")),
        Family("Lumina2Transformer2DModel", "prefix", _channels_first_grid, ("context_refiner.",)),
        Family("ConsisIDTransformer3DModel", "prefix", _cogvideox_grid),
        Family("BriaFiboTransformer2DModel", "prefix", _flux_grid),
        # gist tokens (the Perceiver's summary of the text) first; the Perceiver's attention is among them alone
        Family("BriaFibo2Transformer2DModel", "prefix", _bria_fibo2_grid, ("perceiver.",)),
        Family("GlmImageTransformer2DModel", "prefix", _channels_first_grid),
        Family("Krea2Transformer2DModel", "prefix", _krea2_grid, ("text_fusion.",)),
        # text last in joint attention
        Family("ErnieImageTransformer2DModel", "suffix", _channels_first_grid),
        Family("JoyImageEditTransformer3DModel", "suffix", _joyimage_grid),
        # text only in separate cross-attention
        *(Family(name, "none", _channels_first_grid) for name in ("SkyReelsV2Transformer3DModel",
          "ChronoEditTransformer3DModel", "HunyuanDiT2DModel", "LuminaNextDiT2DModel",
          "WanAnimateTransformer3DModel")),
    )
}  # fmt: skip
GENERIC = Family("generic", "unknown", _channels_first_grid)


def text_padding_groups(mask: Tensor, layout: TokenLayout, batch: int) -> list[tuple[Tensor, Tensor]] | None:
    """(valid keys, sample indices) per distinct key mask, when masks only hide text tokens.

    Handles the key-padding masks of HunyuanVideo and QwenImage, bool (B, 1, 1, N); any other
    mask returns None (the call runs dense).
    """
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1) or not layout.num_text:
        return None
    if mask.shape[0] not in (1, batch):
        return None
    valid = mask[:, 0, 0].expand(batch, -1)  # a mask broadcast over the batch holds for every sample
    start = layout.text_prefix
    if valid.shape[-1] != layout.num_tokens or not valid[:, start : start + layout.num_visual].all():
        return None
    patterns, inverse = torch.unique(valid.expand(-1, layout.num_tokens), dim=0, return_inverse=True)
    return [(p, (inverse == i).nonzero().squeeze(1)) for i, p in enumerate(patterns)]


def can_reuse_whole(attn) -> bool:
    """Whether a layer's output depends on its attention output only (DiT processors), so a layer
    whose heads all reuse may return its last output whole; not for processors that add their
    input back (`residual_connection`)."""
    return not getattr(attn, "residual_connection", False)


def family_of(model) -> Family:
    return FAMILIES.get(type(model).__name__, GENERIC)


# Every transformer class diffusers 0.42 exports (`diffusers.models.transformers`) and what `apply`
# does with it; tests/test_families.py fails when diffusers exports a class not listed here.
#   "sparse": its self/joint attention runs sparse (what is inferred: text place, grid source);
#             each is built from a tiny config in the tests (dense equals native, local runs);
#   "dense":  `apply` works, but its attention calls run dense, counted under the reason given;
#   "refused": `apply` refuses it with the reason given (no image or video grid to be sparse on).
# A class not listed (a user's own) runs through the generic adapter (channels-first latents, text
# place unknown: calls holding text run dense, counted).
_CHANNELS = "grid from the (B, C, [F,] H, W) latents and the patch sizes"
_PACKED = "grid from img_ids (packed latents)"
_NO_GRID = "its tokens are not an image or video grid"
_LINEAR = "self-attention is linear attention (already O(N), no softmax to sparsify); cross-attention runs dense"
SUPPORT: dict[str, tuple[str, str]] = {
    "AceStepTransformer1DModel": ("refused", f"1-D audio latents: {_NO_GRID}"),
    "AllegroTransformer3DModel": ("sparse", f"no text in self-attention; {_CHANNELS}"),
    "AnyFlowFARTransformer3DModel": ("dense", "frame-causal self-attention runs through flex_attention with a "
                                              "BlockMask, not SDPA: it runs as the model wrote it (uncounted); "
                                              "cross-attention dense"),
    "AnyFlowTransformer3DModel": ("sparse", "no text in self-attention (Wan-style); grid from the (B, F, C, H, W) "
                                            "latents"),
    "AuraFlowTransformer2DModel": ("sparse", f"text prefix in joint and single-stream attention; {_CHANNELS}"),
    "BriaFibo2Transformer2DModel": ("sparse", "gist tokens (the text, resampled) as a prefix; its Perceiver dense "
                                              f"(text only); {_CHANNELS} (images to edit, padded gist tokens: dense)"),
    "BriaFiboTransformer2DModel": ("sparse", f"text prefix (Flux-style); {_PACKED}"),
    "BriaTransformer2DModel": ("sparse", f"text prefix (Flux-style); {_PACKED}"),
    "ChromaTransformer2DModel": ("sparse", f"text prefix (Flux-style); {_PACKED}"),
    "ChronoEditTransformer3DModel": ("sparse", f"no text in self-attention (Wan-style); {_CHANNELS}"),
    "CogVideoXTransformer3DModel": ("sparse", "text prefix; grid from the (B, F, C, H, W) latents"),
    "CogView3PlusTransformer2DModel": ("sparse", f"text prefix; {_CHANNELS}"),
    "CogView4Transformer2DModel": ("sparse", f"text prefix; {_CHANNELS}"),
    "ConsisIDTransformer3DModel": ("sparse", "text prefix (CogVideoX-style); grid from the (B, F, C, H, W) latents"),
    "Cosmos3OmniTransformer": ("dense", "text queries attend causally, image queries over [text; image] keys: "
                                        "not one self-attention (`dense: not self-attention`)"),
    "CosmosTransformer3DModel": ("sparse", f"no text in self-attention (generic adapter); {_CHANNELS}"),
    "DiTTransformer2DModel": ("sparse", f"class-conditioned, no text; {_CHANNELS}"),
    "DreamLiteTransformer2DModel": ("sparse", f"no text in self-attention (generic adapter); {_CHANNELS}"),
    "DualTransformer2DModel": ("refused", "a pair of Transformer2DModels mixing two conditions (VersatileDiffusion)"),
    "EasyAnimateTransformer3DModel": ("sparse", f"text prefix; {_CHANNELS}"),
    "ErnieImageTransformer2DModel": ("sparse", f"text suffix (padded text: per-sample key groups); {_CHANNELS}"),
    "Flux2Transformer2DModel": ("sparse", f"text prefix; {_PACKED} (reference images: dense)"),
    "Flux3Transformer2DModel": ("sparse", f"text prefix; {_PACKED} (image conditions: dense)"),
    "FluxTransformer2DModel": ("sparse", f"text prefix; {_PACKED} (reference images: dense)"),
    "GlmImageTransformer2DModel": ("sparse", f"text prefix; {_CHANNELS} (image-edit KV cache: dense)"),
    "HeliosTransformer3DModel": ("sparse", f"no text in self-attention (generic adapter); {_CHANNELS}"),
    "HiDreamImageTransformer2DModel": ("sparse", "text suffix (a different length per block; non-square images: "
                                                 f"padding kept with the text); {_CHANNELS}"),
    "HunyuanDiT2DModel": ("sparse", f"no text in self-attention; {_CHANNELS}"),
    "HunyuanImageTransformer2DModel": ("sparse", f"text suffix; token refiner dense (text only); {_CHANNELS}"),
    "HunyuanVideo15Transformer3DModel": ("dense", "its joint attention takes a query-and-key padding mask "
                                                  "(B, 1, N, N) over per-sample reordered text: counted as "
                                                  "`dense: attention mask`"),
    "HunyuanVideoFramepackTransformer3DModel": ("dense", "history latents of three patch sizes are packed before "
                                                         "the grid: no one layout (`dense: no layout`); token "
                                                         "refiner dense (text only)"),
    "HunyuanVideoTransformer3DModel": ("sparse", f"text suffix; token refiner dense (text only); {_CHANNELS}"),
    "Ideogram4Transformer2DModel": ("dense", "text and image tokens packed in any order, placed by a per-token "
                                             "indicator under a segment mask: no one layout (`dense: no layout`)"),
    "JoyImageEditPlusTransformer3DModel": ("dense", "target and reference images of different sizes packed into one "
                                                    "padded sequence: no one layout (`dense: no layout`)"),
    "JoyImageEditTransformer3DModel": ("sparse", "text suffix; grid from the (B, C, F, H, W) latents, or (B, items, "
                                                 "C, F, H, W) with items as frames"),
    "Kandinsky5Transformer3DModel": ("sparse", "no text in visual self-attention (text blocks dense, text only); "
                                               "grid from the (B, F, H, W, C) latents (its own NABLA order: dense)"),
    "Kandinsky6SRTransformer3DModel": ("dense", "already sparse: its own NABLA attention over 8 x 8 local tiles "
                                                "through flex_attention, left as the model wrote it (uncounted)"),
    "Kandinsky6Transformer3DModel": ("sparse", "no text in video self-attention (text branches dense, text only); "
                                              "grid from the (B, F, H, W, C) latents; its audio stream dense"),
    "Krea2Transformer2DModel": ("sparse", "text prefix (padded text: per-sample key groups); text fusion dense "
                                          "(text only); grid from the image rows of position_ids"),
    "LTX2VideoTransformer3DModel": ("sparse", "no text in video self-attention; grid from num_frames, height, "
                                              "width; audio self-attention and audio-video attention dense"),
    "LTXVideoTransformer3DModel": ("sparse", "no text in self-attention; grid from num_frames, height, width"),
    "LatteTransformer3DModel": ("dense", "spatial attention per frame and temporal attention per position: no layout "
                                         "of the whole grid (dense: no layout)"),
    "LongCatAudioDiTTransformer": ("refused", f"1-D audio latents: {_NO_GRID}"),
    "LongCatImageTransformer2DModel": ("sparse", f"text prefix (Flux-style); {_PACKED}"),
    "Lumina2Transformer2DModel": ("sparse", f"text prefix; caption refiner dense (text only); {_CHANNELS}"),
    "LuminaNextDiT2DModel": ("sparse", f"no text in self-attention; {_CHANNELS}"),
    "MiniMaxH3Transformer3DModel": ("dense", "text, audio and video rows scattered into one sequence by index "
                                             "tensors: no one layout (`dense: no layout`)"),
    "MiniMaxMusic3RVQDepthDecoder": ("refused", f"a depth decoder over audio codebooks: {_NO_GRID}"),
    "MiniMaxMusic3Transformer1DModel": ("refused", f"1-D music latents: {_NO_GRID}"),
    "MochiTransformer3DModel": ("sparse", f"per-sample text suffix (its valid tokens); {_CHANNELS}"),
    "MotifVideoTransformer3DModel": ("sparse", f"text suffix; {_CHANNELS}"),
    "NucleusMoEImageTransformer2DModel": ("dense", "image queries attend over [image; text] keys: no one layout "
                                                   "for both (counted as `dense: not self-attention`)"),
    "OmniGenTransformer2DModel": ("dense", "its attention takes an (N, N) mask, causal over the interleaved text: "
                                           "counted as `dense: attention mask`"),
    "OvisImageTransformer2DModel": ("sparse", f"text prefix (Flux-style); {_PACKED}"),
    "PRXTransformer2DModel": ("dense", "image queries attend over [text; image] keys: no one layout for both "
                                       "(counted as `dense: not self-attention`)"),
    "PixArtTransformer2DModel": ("sparse", f"no text in self-attention; {_CHANNELS}"),
    "PriorTransformer": ("refused", f"a prior over CLIP embeddings (a few tokens): {_NO_GRID}"),
    "QwenImage21Transformer2DModel": ("dense", "block-causal: text segments attend causally, the target image's "
                                               "queries over [text and condition images; target] keys (`dense: not "
                                               "self-attention`); packed (B, N, C) latents give no grid"),
    "QwenImageTransformer2DModel": ("sparse", "text prefix; grid from img_shapes (several images: dense)"),
    "RFD4ProteinaTransformer": ("refused", f"protein structure tokens: {_NO_GRID}"),
    "SD3Transformer2DModel": ("sparse", f"text suffix; {_CHANNELS}"),
    "SanaTransformer2DModel": ("dense", _LINEAR),
    "SanaVideoTransformer3DModel": ("dense", _LINEAR),
    "SanaWMLTX2RefinerTransformer3DModel": ("dense", "patchified (B, N, C) tokens with a rotary table built by its "
                                                     "pipeline: no grid in its arguments (`dense: no layout`); with "
                                                     "its sliding-window KV cache the active block's queries attend "
                                                     "over [sink; history; current] keys"),
    "SanaWMTransformer3DModel": ("dense", "gated delta-rule linear attention (already O(N)) in most blocks; every "
                                          "`softmax_every_n`-th block calls torch's SDPA inside the module, not "
                                          "through an attention processor: it runs as the model wrote it (uncounted); "
                                          "cross-attention dense"),
    "SkyReelsV2Transformer3DModel": ("sparse", f"no text in self-attention (Wan-style); {_CHANNELS}"),
    "StableAudio3DiTModel": ("refused", f"1-D audio latents: {_NO_GRID}"),
    "StableAudioDiTModel": ("refused", f"1-D audio latents: {_NO_GRID}"),
    "T5FilmDecoder": ("refused", f"a spectrogram decoder (music): {_NO_GRID}"),
    "Transformer2DModel": ("sparse", f"no text in self-attention (generic adapter); {_CHANNELS}"),
    "TransformerTemporalModel": ("refused", "temporal attention over frames only (short sequences: nothing to skip)"),
    "WanAnimate2Transformer3DModel": ("dense", "the reference pass takes per-sample lists (`dense: no layout`), the "
                                               "generation pass attends over [cached reference keys; its own] "
                                               "(`dense: not self-attention`)"),
    "WanAnimateTransformer3DModel": ("sparse", f"no text in self-attention (Wan-style); {_CHANNELS}"),
    "WanTransformer3DModel": ("sparse", f"no text in self-attention; {_CHANNELS}"),
    "WanVACETransformer3DModel": ("sparse", f"no text in self-attention; {_CHANNELS}"),
    "ZImageTransformer2DModel": ("dense", "per-sample lists of images and captions, each padded to a multiple of 32 "
                                          "tokens: no one layout (`dense: no layout`)"),
}  # fmt: skip


def check_supported(model) -> None:
    """Refuse a model class whose `SUPPORT` entry is "refused", with the reason and what runs sparse."""
    status, reason = SUPPORT.get(type(model).__name__, ("generic", ""))
    if status == "refused":
        supported = ", ".join(name for name, (s, _) in SUPPORT.items() if s == "sparse")
        raise TypeError(
            f"sparsediff does not support {type(model).__name__}: {reason}. It makes image and video "
            f"transformers sparse: {supported}. To request a model, open an issue with its diffusers class "
            "and model id."
        )
