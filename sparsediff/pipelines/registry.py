"""Model names -> pipelines: built-in names, local folders and diffusers model ids.

Image and video models are diffusers pipelines; text models are bidirectional transformers
language models (masked diffusion) with their tokenizer.

Built-in `tiny-<family>` pipelines have random weights. They are built from configs on first use,
saved to the cache folder (`$SPARSEDIFF_CACHE`, default ~/.cache/sparsediff) and loaded back
with `from_pretrained`, so the real loading path runs offline. Each entry knows its default size
(video defaults give >= 8k tokens per attention call, so their timings mean something), the
sizes the model can take, and extra call arguments.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from sparsediff.integrations.families import patch_sizes
from sparsediff.pipelines.shapes.data import HELD_OUT
from sparsediff.pipelines.shapes.judge import judge_prompt
from sparsediff.pipelines.tiny import TEXT_LEN, tiny_pipeline

ASSETS = Path(__file__).resolve().parents[2] / "assets"


@dataclass(frozen=True)
class Size:
    frames: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


@dataclass(frozen=True)
class ModelEntry:
    """What `generate` needs to know about a model beyond its pipeline."""

    name: str
    video: bool
    default_size: Size | None  # None for text models
    steps: int = 20
    guidance: float = 5.0
    call_kwargs: dict = field(default_factory=dict)  # extra arguments of every pipeline call
    random_weights: bool = False
    build: Callable[[], object] | None = None  # makes the pipeline to cache (built-ins only)
    folder: Path | None = None  # shipped weights (built-ins only)
    judge: Callable | None = None  # (frames, prompt) -> verdict dict, or None when it cannot judge
    config: Path | None = None  # shipped sparse config, used when no method is given
    text: bool = False  # a diffusion language model (transformers), not a diffusers pipeline
    held_out: tuple[str, ...] = ()  # prompts kept out of training, for honest quality figures

    def held_out_prompts(self, count: int) -> list[str]:
        """`count` held-out prompts spread evenly over the list (so a few still cover every colour)."""
        if not self.held_out:
            raise ValueError(f"model {self.name!r} has no held-out prompts; pass --prompt instead")
        if not 1 <= count <= len(self.held_out):
            raise ValueError(f"--held-out must be in 1..{len(self.held_out)} for {self.name!r}, got {count}")
        return _spread(self.held_out, count)

    def validation_prompts(self, count: int, calibration: Sequence[str]) -> list[str]:
        """`count` held-out prompts a search calibrated on `calibration` never saw, spread evenly over
        the rest, so its validation is on new prompts."""
        if not self.held_out:
            raise ValueError(f"model {self.name!r} has no held-out prompts; give validation prompts of your own")
        unseen = [prompt for prompt in self.held_out if prompt not in set(calibration)]
        if not 1 <= count <= len(unseen):
            raise ValueError(
                f"{self.name!r} has {len(unseen)} held-out prompts the calibration does not use; "
                f"validate on 1..{len(unseen)} of them, not {count}"
            )
        return _spread(unseen, count)

    def size(self, num_frames: int | None, height: int | None, width: int | None) -> Size:
        """The requested size, defaults filled in from this entry (images have one frame) where a
        value is not given; a given 0 stays 0, for `check_size` to refuse."""
        d = self.default_size
        frames = (d.frames if self.video else 1) if num_frames is None else num_frames
        return Size(frames, d.height if height is None else height, d.width if width is None else width)


def _spread(prompts: Sequence[str], count: int) -> list[str]:
    """`count` of `prompts` at even steps over the list."""
    return [prompts[i * len(prompts) // count] for i in range(count)]


def _tiny_llada():
    from sparsediff.pipelines.dllm import dlm_tokenizer, tiny_dlm

    tokenizer = dlm_tokenizer([*"abcdefghijklmnopqrstuvwxyz", *(str(i) for i in range(10)), "=", ";", "?"])
    return tiny_dlm(len(tokenizer), hidden=64, layers=2, heads=4, kv_heads=2, context=8192), tokenizer


def _tiny(family: str, video: bool, size: Size, **kwargs) -> ModelEntry:
    return ModelEntry(
        name=f"tiny-{family}",
        video=video,
        default_size=size,
        steps=20,
        random_weights=True,
        build=lambda: tiny_pipeline(family),
        **kwargs,
    )


# Default sizes give >= 8k visual tokens per attention call: wan 15 x 256 x 256, cogvideox
# 8 x 256 x 256 and hunyuanvideo 29 x 256 x 256 (latent 8 x 64 x 64, patch 2: 8 x 32 x 32),
# ltx 33 x 128 x 128 (latent 9 x 32 x 32, patch 1).
BUILTIN: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        _tiny("wan", True, Size(15, 256, 256)),
        _tiny("cogvideox", True, Size(8, 256, 256), call_kwargs={"max_sequence_length": TEXT_LEN}),
        _tiny(
            "hunyuanvideo",
            True,
            Size(29, 256, 256),
            call_kwargs={"max_sequence_length": TEXT_LEN, "prompt_template": {"template": "{}", "crop_start": 0}},
        ),
        _tiny("ltx", True, Size(33, 128, 128), call_kwargs={"max_sequence_length": TEXT_LEN}),
        _tiny("flux", False, Size(1, 512, 512), call_kwargs={"max_sequence_length": TEXT_LEN}),
        _tiny("sd3", False, Size(1, 512, 512), call_kwargs={"max_sequence_length": TEXT_LEN}),
        _tiny(
            "pixart", False, Size(1, 512, 512), call_kwargs={"max_sequence_length": TEXT_LEN, "clean_caption": False}
        ),
        ModelEntry(
            name="tiny-llada",
            video=False,
            default_size=None,
            steps=32,
            call_kwargs={"gen_length": 32, "block_length": 32},
            random_weights=True,
            build=_tiny_llada,
            text=True,
        ),
        ModelEntry(
            name="tiny-dlm",  # trained by us on needle retrieval (pipelines/train_dlm.py)
            video=False,
            default_size=None,
            steps=4,
            call_kwargs={"gen_length": 4},
            folder=ASSETS / "tiny-dlm",
            text=True,
        ),
        ModelEntry(
            name="shapes-t2v",
            video=True,
            default_size=Size(16, 64, 64),
            steps=20,
            guidance=4.0,
            folder=ASSETS / "shapes-t2v",
            judge=judge_prompt,
            config=ASSETS / "shapes-t2v" / "sparse.json",
            held_out=tuple(str(c) for c in HELD_OUT),
        ),
    )
}


def known_models() -> list[str]:
    return sorted(BUILTIN)


def default_model() -> str:
    """The embedded trained model when its weights are shipped, else tiny-wan."""
    shipped = BUILTIN.get("shapes-t2v")
    return (
        "shapes-t2v" if shipped is not None and shipped.folder is not None and shipped.folder.exists() else "tiny-wan"
    )


def cache_dir() -> Path:
    return Path(os.environ.get("SPARSEDIFF_CACHE", Path.home() / ".cache" / "sparsediff"))


def _pipeline_class(folder: Path):
    """Our own pipeline classes are not in diffusers' namespace: pick them by model_index.json."""
    from diffusers import DiffusionPipeline

    from sparsediff.pipelines.shapes.pipeline import ShapesT2VPipeline

    index = folder / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder} is not a diffusers pipeline folder: cannot read {index} ({err})") from err
    return ShapesT2VPipeline if name == ShapesT2VPipeline.__name__ else DiffusionPipeline


def _cached_folder(entry: ModelEntry) -> Path:
    """The built-in's pipeline folder, built and saved once (atomically) on first use."""
    if entry.folder is not None:
        if not (entry.folder / ("config.json" if entry.text else "model_index.json")).exists():
            raise FileNotFoundError(f"{entry.name}'s weights are missing from {entry.folder}; reinstall sparsediff")
        return entry.folder
    folder = cache_dir() / entry.name
    if not (folder / "model_index.json").exists() and not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=folder.parent))
        try:
            for part in entry.build() if entry.text else (entry.build(),):  # (model, tokenizer) for text
                part.save_pretrained(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@dataclass
class LoadedModel:
    pipe: object  # a diffusers pipeline, or the transformers model of a text entry
    entry: ModelEntry
    load_s: float
    tokenizer: object | None = None  # text models


def _load_text_model(folder: Path, torch_dtype: torch.dtype):
    """A bidirectional transformers LM and its tokenizer from a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).eval()
    if getattr(model.config, "is_causal", True):
        raise ValueError(
            f"{folder} holds a causal language model; masked diffusion needs a bidirectional one "
            "(is_causal=False in its config)"
        )
    return model, AutoTokenizer.from_pretrained(folder)


def load_model(name: str, torch_dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> LoadedModel:
    """A built-in name, a local pipeline folder, or a diffusers model id -> a loaded pipeline (or
    language model) on `device` in `torch_dtype`."""
    start = time.perf_counter()
    tokenizer = None
    if name in BUILTIN:
        entry = BUILTIN[name]
        folder = _cached_folder(entry)
        if entry.text:
            pipe, tokenizer = _load_text_model(folder, torch_dtype)
            entry = replace(entry, folder=folder)  # where task files live (`sparsediff eval`)
        else:
            pipe = _pipeline_class(folder).from_pretrained(folder, dtype=torch_dtype)
    elif Path(name).exists():
        folder = Path(name)
        if not folder.is_dir():
            raise ValueError(f"--model {name} is a file; give a diffusers pipeline folder (with model_index.json)")
        if not (folder / "model_index.json").exists() and (folder / "config.json").exists():
            pipe, tokenizer = _load_text_model(folder, torch_dtype)
            entry = ModelEntry(name=folder.name, video=False, default_size=None, steps=64, text=True, folder=folder,
                               call_kwargs={"gen_length": 64, "block_length": 32})  # fmt: skip
        else:
            pipeline_class = _pipeline_class(folder)
            pipe = pipeline_class.from_pretrained(folder, dtype=torch_dtype)
            if pipeline_class.__name__ == "ShapesT2VPipeline":  # our own model: keep its defaults and judge
                entry = replace(BUILTIN["shapes-t2v"], name=folder.name, folder=folder, config=folder / "sparse.json")
            else:
                entry = generic_entry(pipe, folder.name)
    elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(name, dtype=torch_dtype)
        except OSError as err:
            raise ValueError(
                f"cannot load {name!r} from the Hugging Face hub or its cache ({err}); download it where the hub is "
                f"reachable and pass the local folder, or use a built-in model: {', '.join(known_models())}"
            ) from err
        entry = generic_entry(pipe, name)
    else:
        looks_local = name.startswith((".", "/", "~")) or os.sep in name
        what = f"folder {name} does not exist" if looks_local else f"unknown model {name!r}"
        raise ValueError(
            f"{what}; give a built-in model ({', '.join(known_models())}), a local pipeline folder, "
            "or a diffusers model id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
        )
    if tokenizer is None:
        pipe.set_progress_bar_config(leave=False)
    pipe.to(device)
    return LoadedModel(pipe, entry, time.perf_counter() - start, tokenizer)


def _call_defaults(pipe) -> dict:
    params = inspect.signature(type(pipe).__call__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def generic_entry(pipe, name: str) -> ModelEntry:
    """Defaults of a pipeline we know nothing about, read from its `__call__` signature."""
    defaults = _call_defaults(pipe)
    video = "num_frames" in defaults
    spatial = _first_attr(pipe, ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_scale_factor"))
    fallback = getattr(pipe, "default_sample_size", 64) * spatial
    height = defaults.get("height") or fallback
    width = defaults.get("width") or fallback
    return ModelEntry(
        name=name,
        video=video,
        default_size=Size(int(defaults.get("num_frames") or 1), int(height), int(width)),
        steps=int(defaults.get("num_inference_steps") or 30),
        guidance=float(defaults.get("guidance_scale") or 5.0),
    )


def size_rules(pipe) -> tuple[int, int]:
    """(frame step, spatial multiple): valid frame counts are 1 + k * step, sides multiples."""
    transformer = pipe.transformer
    patch_t, _, patch = patch_sizes(transformer.config)
    spatial = _first_attr(pipe, ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_scale_factor"))
    if hasattr(pipe, "_pack_latents"):  # Flux-style 2x2 packing
        patch *= 2
    temporal = _first_attr(pipe, ("vae_scale_factor_temporal", "vae_temporal_compression_ratio"))
    return temporal * patch_t, spatial * patch


def _first_attr(pipe, names: tuple[str, ...]) -> int:
    """The first of the names pipelines use for a VAE factor (they differ per family); 1 if none."""
    for name in names:
        value = getattr(pipe, name, None)
        if value:
            return int(value)
    return 1


def check_size(loaded: LoadedModel, size: Size) -> None:
    """Refuse sizes the model cannot take, naming the nearest valid one."""
    frame_step, multiple = size_rules(loaded.pipe)
    problems = []
    if not loaded.entry.video and size.frames != 1:
        problems.append(f"{loaded.entry.name} makes images: --num-frames must be 1")
    if loaded.entry.video and (size.frames < 1 or (size.frames - 1) % frame_step):
        nearest = max(1, 1 + round((size.frames - 1) / frame_step) * frame_step)
        problems.append(f"--num-frames {size.frames} is not 1 + a multiple of {frame_step}; nearest: {nearest}")
    max_frames = _max_frames(loaded.pipe, frame_step)
    if max_frames is not None and size.frames > max_frames:
        problems.append(f"--num-frames {size.frames} exceeds what the model's positions cover; at most {max_frames}")
    for name, value in (("height", size.height), ("width", size.width)):
        if value < multiple or value % multiple:
            nearest = max(multiple, round(value / multiple) * multiple)
            problems.append(f"--{name} {value} is not a multiple of {multiple}; nearest: {nearest}")
    if problems:
        raise ValueError(f"{loaded.entry.name} cannot make {size}: " + "; ".join(problems))


def _max_frames(pipe, frame_step: int) -> int | None:
    """Frames covered by Wan's rotary table (`rope_max_seq_len` latent frames); None: no limit known."""
    limit = getattr(pipe.transformer.config, "rope_max_seq_len", None)
    return None if limit is None else 1 + (int(limit) - 1) * frame_step
