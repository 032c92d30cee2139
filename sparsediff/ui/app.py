"""`sparsediff ui`: a Gradio app over the library's own calls (compare, search, inspect, text).

It owns no algorithm: every tab calls what the CLI calls (`generate.compare`, `search.search`,
`search.inspect.inspect_head`, `generate.compare_text`). Models load once and are cached per name;
applying sparse attention mutates a shared pipeline, so each loaded model has a lock and work on
it is serialized (Gradio's queue runs requests concurrently otherwise). Every error reaches the
page as a readable `gr.Error`, never a traceback.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

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


@dataclass
class Slot:
    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)


class Models:
    """Loaded models by name, each with the lock that serializes work on its pipeline."""

    def __init__(self) -> None:
        self._slots: dict[str, Slot] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Slot:
        name = (name or "").strip()
        if not name:
            raise ValueError("choose a model, or give a local pipeline folder")
        with self._lock:
            if name not in self._slots:
                loaded = load_model(name)
                if loaded.tokenizer is None:  # a diffusers pipeline: its step bar feeds the page's progress
                    loaded.pipe.set_progress_bar_config(disable=False)
                self._slots[name] = Slot(loaded)
            return self._slots[name]


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


def build_app(default: str | None = None, models: Models | None = None) -> gr.Blocks:
    models = models or Models()
    default = default or default_model()
    out_dir = Path(tempfile.mkdtemp(prefix="sparsediff-ui-"))
    entry = BUILTIN.get(default)
    examples = (
        list(entry.held_out_prompts(6)) if entry is not None and entry.held_out else ["a red circle moving right"]
    )
    size = entry.default_size if entry is not None and entry.default_size is not None else None

    def run_compare(model, folder, prompt, method, density, upload, steps, seed, frames, height, width, dense_too):
        try:
            slot = models.get(folder or model)
            loaded = slot.loaded
            request = _request(loaded, prompt, steps, seed, frames, height, width)
            check_request(loaded, request)
            config = _config(loaded, method, density, upload)
            suffix = ".mp4" if loaded.entry.video else ".png"
            with slot.lock:
                target = Path(tempfile.mkdtemp(dir=out_dir)) / f"result{suffix}"
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

    def run_search(model, folder, prompts, objective, value, kv_block, refine, steps, frames, height, width,
                   progress=TRACK_TQDM):  # fmt: skip
        from sparsediff.generate import shared_call_kwargs
        from sparsediff.search import search

        try:
            slot = models.get(folder or model)
            loaded = slot.loaded
            texts = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
            if not texts:
                raise ValueError("give calibration prompts, one a line")
            request = _request(loaded, texts[0], steps, 0, frames, height, width)
            check_request(loaded, request)
            bound = {"budget": float(value)} if objective == "budget" else {"max_error": float(value)}
            with slot.lock:
                result = search(loaded.pipe, texts, num_inference_steps=request.steps, calibration_steps=2,
                                kv_block_size=int(kv_block) or None, refine=int(refine or 0), progress=True, **bound,
                                **shared_call_kwargs(loaded, request))  # fmt: skip
            folder_out = Path(tempfile.mkdtemp(dir=out_dir))
            report = result.write_report(folder_out)
            config_path = result.config.save(folder_out / "searched.json")
            refined = result.config.search.get("refinement")
            text = report["table"].read_text() + (
                f"\nrefined end to end: PSNR on the prompts {refined['psnr_before']} -> {refined['psnr_after']} dB"
                if refined
                else ""
            )
            return str(report["heatmap"]), text, str(config_path), str(config_path)
        except ERRORS as err:
            raise gr.Error(str(err)) from err

    def run_inspect(model, folder, prompt, method, density, upload, layer, head, step, steps, frames, height, width,
                    progress=TRACK_TQDM):  # fmt: skip
        from sparsediff.generate import shared_call_kwargs
        from sparsediff.search.inspect import head_images, inspect_head

        try:
            slot = models.get(folder or model)
            loaded = slot.loaded
            request = _request(loaded, prompt, steps, 0, frames, height, width)
            check_request(loaded, request)
            config = _config(loaded, method, density, upload)
            with slot.lock:
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
            transformer = models.get(folder or model).loaded.pipe.transformer
        except ERRORS as err:
            raise gr.Error(str(err)) from err
        names = [n.removesuffix(".processor") for n in attention_processors(transformer)]
        names = [n for n in names if not n.endswith("attn2") and not n.startswith("context_embedder")]
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def new_haystack(seed):
        from sparsediff.pipelines.needles import level_of, sample

        try:
            loaded = models.get("tiny-dlm").loaded
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
            slot = models.get("tiny-dlm")
            loaded = slot.loaded
            level = level_of(loaded.entry.folder)
            config = SparseConfig.load("sparsed", keep_ratio=float(keep), schedule={"dense_fraction": float(switch)})
            request = TextRequest(text, level.answer_tokens, level.answer_tokens, level.answer_tokens)
            with slot.lock:
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
        gr.Markdown("# sparsediff\nDense and sparse attention side by side, on your prompt.")
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
                objective = gr.Radio(["budget", "max error"], value="budget", label="Objective")
                bound = gr.Number(value=0.5, label="Budget (fraction of dense time) or max error")
                kv_block = gr.Number(value=16, precision=0, label="KV block size (0: the query block)")
                refine = gr.Number(value=0, precision=0, label="Refine: end-to-end generations (budget only; 0: off)")
            search_button = gr.Button("Search", variant="primary")
            with gr.Row():
                heatmap = gr.Image(label="Chosen pattern per layer and head")
                table = gr.Textbox(label="Table", lines=12)
            searched = gr.File(label="Searched config")
            use_button = gr.Button("Use this config in Compare")
            searched_path = gr.State()
            search_inputs = [model, folder, calibration, objective, bound, kv_block, refine, steps,
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


def launch(default: str | None = None, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> gr.Blocks:
    """Build, queue and serve the app; with `block` False it serves in the background (tests)."""
    app = build_app(default)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True)
    return app
