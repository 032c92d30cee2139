"""`sparsediff ui`: a Gradio app over the library's own calls (compare, search, inspect, text).

It owns no algorithm: every tab calls what the CLI calls (`generate.compare`, `search.search`,
`search.inspect.inspect_head`, `generate.compare_text`). Models load once and are cached per name,
a few at a time (the least recently used is dropped). Requests queue for one worker: generating
mutates a shared pipeline and the figures (timings, peak memory) hold only for a request that ran
alone, so work runs one request at a time (Gradio's queue runs handlers concurrently otherwise).
What a request may ask is bounded (`Limits`), local pipeline folders are served only where the
operator allows it, and each request's files live in a folder of their own, of which only the
latest few are kept. Every error reaches the page as a readable `gr.Error`, never a traceback.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from sparsediff.config import PRESETS, SparseConfig
from sparsediff.generate import (
    Request,
    TextRequest,
    check_request,
    compare,
    compare_text,
    generate_one,
    resolve_config,
    with_density,
)
from sparsediff.pipelines.registry import BUILTIN, LoadedModel, default_model, known_models, load_model

logger = logging.getLogger(__name__)
ERRORS = (ValueError, FileNotFoundError, FloatingPointError, RuntimeError, TypeError)
SHIPPED = "shipped config"
TRACK_TQDM = gr.Progress(track_tqdm=True)  # Gradio fills a handler's Progress default per request


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a shared server: a config with tiny blocks, the `reference`
    backend or a huge video would hold O(N^2) memory and the worker for everyone else."""

    max_tokens: int = 65_536  # latent frames x height x width after patchify, as the model's size check counts
    max_pixels: int = 64 * 1024 * 1024  # frames x height x width of the output
    max_steps: int = 100
    min_block_size: int = 16
    backends: tuple[str, ...] = ("auto", "torch", "flex", "triton")

    def check(self, request: Request | None = None, config: SparseConfig | None = None) -> None:
        if request is not None:
            pixels = request.size.frames * request.size.height * request.size.width
            if pixels > self.max_pixels:
                raise ValueError(f"{request.size} is {pixels:,} pixels; this server takes at most {self.max_pixels:,}")
            if request.steps > self.max_steps:
                raise ValueError(f"{request.steps} steps; this server takes at most {self.max_steps}")
        if config is not None:
            blocks = [config.block_size, config.kv_block_size or config.block_size]
            if min(blocks) < self.min_block_size:
                raise ValueError(f"block size {min(blocks)}: this server takes blocks of {self.min_block_size} or more")
            if config.backend not in self.backends:
                raise ValueError(f"backend {config.backend!r}: this server runs {', '.join(self.backends)}")


class Models:
    """Loaded models by name, at most `capacity` at a time (the least recently used is dropped).

    A model loads under its own lock, so loading one does not stop requests for another."""

    def __init__(
        self, capacity: int = 2, allow_folders: bool = True, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:  # fmt: skip
        self.capacity = capacity
        self.allow_folders = allow_folders
        self.device, self.dtype = torch.device(device), dtype
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model, or give a local pipeline folder")
        if name not in BUILTIN and not self.allow_folders:
            raise ValueError(
                "this server serves its built-in models only; the operator can allow local pipeline folders "
                "with `sparsediff ui --allow-local-folders`"
            )
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:
            with self._lock:
                if name in self._loaded:
                    return self._loaded[name]
            loaded = load_model(name, self.dtype, self.device)
            if loaded.tokenizer is None:  # a diffusers pipeline: its step bar feeds the page's progress
                loaded.pipe.set_progress_bar_config(disable=False)
            with self._lock:
                self._loaded[name] = loaded
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            return loaded

    def names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)


class RequestFolders:
    """A folder per request under one root; only the newest `keep` are kept (the page has shown
    the older ones), and the root goes when the app closes."""

    def __init__(self, keep: int = 8) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sparsediff-ui-"))
        weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)  # gone when the app is
        self.keep = keep
        self._made: list[Path] = []
        self._lock = threading.Lock()

    def new(self) -> Path:
        with self._lock:
            folder = Path(tempfile.mkdtemp(dir=self.root))
            self._made.append(folder)
            while len(self._made) > self.keep:
                shutil.rmtree(self._made.pop(0), ignore_errors=True)
            return folder

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _video_models() -> list[str]:
    return [name for name in known_models() if not BUILTIN[name].text]


def _config(loaded: LoadedModel, method: str, density: float | None, upload) -> SparseConfig:
    """The uploaded config, else the method (the shipped config takes no density)."""
    if upload is not None:
        return SparseConfig.load(upload if isinstance(upload, str) else upload.name)
    if method == SHIPPED:
        return resolve_config(loaded.entry, None, None, None)
    config = SparseConfig.load(method)
    return config if density is None or config.method in ("pattern", "dense") else with_density(config, density, method)


def _request(loaded: LoadedModel, prompt, steps, seed, frames, height, width) -> Request:
    entry = loaded.entry
    size = entry.size(int(frames) if entry.video else 1, int(height), int(width))
    return Request(prompt or "", size, int(steps), entry.guidance, int(seed))


def _table(summary: dict) -> list[list[str]]:
    rows = []
    for label, key, fmt in (
        ("dense s", "dense_s", "{:.2f}"),
        ("sparse s", "sparse_s", "{:.2f}"),
        ("speedup", "speedup", "{:.2f}x"),
        ("PSNR dB", "psnr", "{:.2f}"),
        ("SSIM", "ssim", "{:.4f}"),
        ("density (all attention work)", "density", "{:.3f}"),
        ("density (sparse calls)", "sparse_density", "{:.3f}"),
    ):
        if key in summary:
            value = summary[key]
            unset = {"psnr": "identical", "sparse_density": "no call ran sparse"}.get(key, "-")
            rows.append([label, unset if value is None else fmt.format(value)])
    for key in ("judge_dense", "judge_sparse"):
        verdict = summary.get(key)
        if verdict is not None:
            seen = verdict["seen"]
            read = f"{seen.get('colour')} {seen.get('shape')}, {seen.get('direction')}"
            right = "colour and direction right" if verdict["colour_and_direction"] else "colour or direction wrong"
            rows.append([key.replace("_", " "), f"{read} ({right})"])
    return rows


def build_app(
    default: str | None = None, models: Models | None = None, limits: Limits = Limits(),
    folders: RequestFolders | None = None,
) -> gr.Blocks:  # fmt: skip
    models = models or Models()
    folders = folders or RequestFolders()
    work = threading.Lock()  # one request generates at a time: its figures are its own
    default = default or default_model()
    entry = BUILTIN.get(default)
    examples = (
        list(entry.held_out_prompts(6)) if entry is not None and entry.held_out else ["a red circle moving right"]
    )
    size = entry.default_size if entry is not None and entry.default_size is not None else None

    def run_compare(model, folder, prompt, method, density, upload, steps, seed, frames, height, width, dense_too):
        try:
            loaded = models.get(folder or model)
            request = _request(loaded, prompt, steps, seed, frames, height, width)
            check_request(loaded, request)
            limits.check(request)
            config = _config(loaded, method, density, upload)
            limits.check(config=config)
            suffix = ".mp4" if loaded.entry.video else ".png"
            with work:
                target = folders.new() / f"result{suffix}"
                if dense_too:
                    summary = compare(loaded, request, config, target).as_json()
                    paths = summary["outputs"]
                    return paths["dense"], paths["sparse"], _table(summary), f"**{request.prompt}**"
                summary = generate_one(loaded, request, config, target)
                return None, summary["outputs"]["sparse"], _table(summary), f"**{request.prompt}**"
        except ERRORS as err:
            raise gr.Error(str(err)) from err

    def compare_both(model, folder, prompt, method, density, upload, steps, seed, frames, height, width,
                     progress=TRACK_TQDM):  # fmt: skip
        return run_compare(model, folder, prompt, method, density, upload, steps, seed, frames, height, width, True)

    def sparse_only(model, folder, prompt, method, density, upload, steps, seed, frames, height, width,
                    progress=TRACK_TQDM):  # fmt: skip
        return run_compare(model, folder, prompt, method, density, upload, steps, seed, frames, height, width, False)

    def run_search(model, folder, prompts, objective, value, kv_block, refine, validate, steps, frames, height, width,
                   progress=TRACK_TQDM):  # fmt: skip
        from sparsediff.generate import shared_call_kwargs
        from sparsediff.search import QualityTarget, search
        from sparsediff.search.report import target_summary

        try:
            loaded = models.get(folder or model)
            texts = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
            if not texts:
                raise ValueError("give calibration prompts, one a line")
            request = _request(loaded, texts[0], steps, 0, frames, height, width)
            check_request(loaded, request)
            limits.check(request)
            bound = {  # the objective's keyword; a target is built for the one picked only
                "budget": lambda v: {"budget": v},
                "max error": lambda v: {"max_error": v},
                "min PSNR (dB)": lambda v: {"target": QualityTarget(min_psnr=v)},
                "min SSIM": lambda v: {"target": QualityTarget(min_ssim=v)},
            }[objective](float(value))
            count = int(validate or 0)
            if count and "target" not in bound:
                raise ValueError("validation goes with a quality target: pick min PSNR or min SSIM")
            held_out = loaded.entry.validation_prompts(count, texts) if count else []
            with work:
                result = search(loaded.pipe, texts, num_inference_steps=request.steps, calibration_steps=2,
                                kv_block_size=int(kv_block) or None, refine=int(refine or 0), progress=True,
                                validate=held_out,
                                work=folders.root / "search-work", **bound,
                                **shared_call_kwargs(loaded, request))  # fmt: skip
            folder_out = folders.new()
            report = result.write_report(folder_out)
            config_path = result.config.save(folder_out / "searched.json")
            refined = result.config.search.get("refinement")
            aimed = result.config.search.get("target")
            text = (
                report["table"].read_text()
                + (
                    f"\nrefined end to end: PSNR on the prompts {refined['psnr_before']} -> {refined['psnr_after']} dB"
                    if refined
                    else ""
                )
                + (f"\n{target_summary(aimed)}" if aimed else "")
            )
            return str(report["heatmap"]), text, str(config_path), str(config_path)
        except ERRORS as err:
            raise gr.Error(str(err)) from err

    def run_inspect(model, folder, prompt, method, density, upload, layer, head, step, steps, frames, height, width,
                    progress=TRACK_TQDM):  # fmt: skip
        from sparsediff.generate import shared_call_kwargs
        from sparsediff.search.inspect import head_images, inspect_head

        try:
            loaded = models.get(folder or model)
            request = _request(loaded, prompt, steps, 0, frames, height, width)
            check_request(loaded, request)
            limits.check(request)
            config = _config(loaded, method, density, upload)
            limits.check(config=config)
            with work:
                view = inspect_head(loaded.pipe, request.prompt, config, layer, int(head), int(step),
                                    num_inference_steps=request.steps, block=config.block_size,
                                    **shared_call_kwargs(loaded, request))  # fmt: skip
            heat, mask = head_images(view)
            error = "-" if view.error is None else f"{view.error:.4f}"
            density_text = "-" if view.density is None else f"{view.density:.3f}"
            text = (f"**{layer}**, head {view.head}, step {view.step}: pattern `{view.pattern}`, relative L2 error "
                    f"{error}, density {density_text}")  # fmt: skip
            return heat, mask, text
        except ERRORS as err:
            raise gr.Error(str(err)) from err

    def layers_of(model, folder):
        from sparsediff.integrations.diffusers import attention_processors

        try:
            transformer = models.get(folder or model).pipe.transformer
        except ERRORS as err:
            raise gr.Error(str(err)) from err
        names = [n.removesuffix(".processor") for n in attention_processors(transformer)]
        names = [n for n in names if not n.endswith("attn2") and not n.startswith("context_embedder")]
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def new_haystack(seed):
        from sparsediff.pipelines.needles import level_of, sample

        try:
            loaded = models.get("tiny-dlm")
            level = level_of(loaded.entry.folder)
            prompts, _ = sample(loaded.tokenizer, level, 1, int(seed))
            return loaded.tokenizer.decode(prompts[0])
        except ERRORS as err:
            raise gr.Error(str(err)) from err

    def run_text(text, keep, switch, progress=TRACK_TQDM):
        from sparsediff.pipelines.needles import level_of

        try:
            if not (text or "").strip():
                raise ValueError("the text is empty: make a haystack or paste one")
            loaded = models.get("tiny-dlm")
            level = level_of(loaded.entry.folder)
            config = SparseConfig.load("sparsed", keep_ratio=float(keep), schedule={"dense_fraction": float(switch)})
            request = TextRequest(text, level.answer_tokens, level.answer_tokens, level.answer_tokens)
            with work:
                summary = compare_text(loaded, request, config)
            rows = [["dense", summary["answer_dense"], f"{summary['dense_s']:.2f}"],
                    ["SparseD", summary["answer_sparse"], f"{summary['sparse_s']:.2f}"]]  # fmt: skip
            density = summary["sparse_density"]
            note = (f"speedup {summary['speedup']:.2f}x, tokens as dense {summary['token_agreement']:.2f}, "
                    f"density of SparseD's plans {'-' if density is None else f'{density:.3f}'}")  # fmt: skip
            return rows, note
        except ERRORS as err:
            raise gr.Error(str(err)) from err

    methods = [SHIPPED, *(name for name in PRESETS if name != "sparsed")]
    with gr.Blocks(title="sparsediff") as app:
        gr.Markdown(
            "# sparsediff\nDense and sparse attention side by side, on your prompt. "
            f"Models run on **{models.device}** in {str(models.dtype).removeprefix('torch.')}."
        )
        with gr.Row():
            model = gr.Dropdown(_video_models(), value=default, label="Model")
            folder = gr.Textbox(label="Local pipeline folder (instead of the model)", placeholder="/path/to/pipeline")
        with gr.Tab("Compare"):
            prompt = gr.Textbox(label="Prompt", value=examples[0])
            gr.Examples(examples, inputs=[prompt], label="Held-out prompts")
            with gr.Row():
                method = gr.Dropdown(methods, value=SHIPPED, label="Method or preset")
                density = gr.Slider(0.05, 1.0, value=0.25, step=0.05, label="Density (methods that take one)")
                upload = gr.File(label="Config JSON", file_types=[".json"])
            with gr.Row():
                steps = gr.Number(value=entry.steps if entry else 20, precision=0, label="Steps")
                seed = gr.Number(value=0, precision=0, label="Seed")
                frames = gr.Number(value=size.frames if size else 1, precision=0, label="Frames")
                height = gr.Number(value=size.height if size else 256, precision=0, label="Height")
                width = gr.Number(value=size.width if size else 256, precision=0, label="Width")
            with gr.Row():
                compare_button = gr.Button("Compare", variant="primary")
                sparse_button = gr.Button("Sparse only")
            shown_prompt = gr.Markdown()
            with gr.Row():
                dense_video = gr.Video(label="Dense")
                sparse_video = gr.Video(label="Sparse")
            metrics = gr.Dataframe(headers=["figure", "value"], label="Figures", interactive=False)
            size_inputs = [steps, seed, frames, height, width]
            compare_inputs = [model, folder, prompt, method, density, upload, *size_inputs]
            compare_outputs = [dense_video, sparse_video, metrics, shown_prompt]
            compare_button.click(compare_both, compare_inputs, compare_outputs)
            sparse_button.click(sparse_only, compare_inputs, compare_outputs)
        with gr.Tab("Search"):
            calibration = gr.Textbox(label="Calibration prompts (one a line)", lines=3, value="\n".join(examples[:2]))
            with gr.Row():
                objective = gr.Radio(["budget", "max error", "min PSNR (dB)", "min SSIM"], value="budget",
                                     label="Objective")  # fmt: skip
                bound = gr.Number(value=0.5, label="Budget (fraction of dense time), max error or quality target")
                kv_block = gr.Number(value=16, precision=0, label="KV block size (0: the query block)")
                refine = gr.Number(value=0, precision=0, label="Refine: end-to-end generations (0: off)")
                validate = gr.Number(value=0, precision=0, label="Validate on held-out prompts (quality target)")
            search_button = gr.Button("Search", variant="primary")
            with gr.Row():
                heatmap = gr.Image(label="Chosen pattern per layer and head")
                table = gr.Textbox(label="Table", lines=12)
            searched = gr.File(label="Searched config")
            use_button = gr.Button("Use this config in Compare")
            searched_path = gr.State()
            search_inputs = [model, folder, calibration, objective, bound, kv_block, refine, validate, steps,
                             frames, height, width]  # fmt: skip
            search_button.click(run_search, search_inputs, [heatmap, table, searched, searched_path])
            use_button.click(lambda path: path, [searched_path], [upload])
        with gr.Tab("Inspect"):
            with gr.Row():
                layer = gr.Dropdown([], label="Layer")
                head = gr.Number(value=0, precision=0, label="Head")
                step = gr.Number(value=1, precision=0, label="Step")
                load_layers = gr.Button("List layers")
            inspect_button = gr.Button("Inspect", variant="primary")
            with gr.Row():
                attention_map = gr.Image(label="Attention mass per block (log)")
                block_mask = gr.Image(label="Blocks the config computes")
            head_text = gr.Markdown()
            load_layers.click(layers_of, [model, folder], [layer])
            inspect_inputs = [model, folder, prompt, method, density, upload, layer, head, step, steps, frames, height,
                              width]  # fmt: skip
            inspect_button.click(run_inspect, inspect_inputs, [attention_map, block_mask, head_text])
        with gr.Tab("Text"):
            haystack = gr.Textbox(label="Haystack and question (tiny-dlm)", lines=6)
            with gr.Row():
                text_seed = gr.Number(value=0, precision=0, label="Haystack seed")
                make = gr.Button("Make a haystack")
                keep = gr.Slider(0.05, 1.0, value=0.3, step=0.05, label="Keep ratio")
                switch = gr.Slider(0.0, 0.9, value=0.2, step=0.05, label="Dense fraction (switch point)")
            answer_button = gr.Button("Answer", variant="primary")
            answers = gr.Dataframe(headers=["attention", "answer", "seconds"], label="Answers", interactive=False)
            text_note = gr.Markdown()
            make.click(new_haystack, [text_seed], [haystack])
            answer_button.click(run_text, [haystack, keep, switch], [answers, text_note])
    return app


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def launch(
    default: str | None = None, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
    allow_local_folders: bool | None = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> gr.Blocks:  # fmt: skip
    """Build, queue and serve the app; with `block` False it serves in the background (tests).

    Local pipeline folders and hub ids load only where `allow_local_folders` says so; by default
    only on a loopback address, where the person at the page is the person at the server."""
    allow = host in LOOPBACK if allow_local_folders is None else allow_local_folders
    app = build_app(default, Models(allow_folders=allow, device=device, dtype=dtype))
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True)
    return app
