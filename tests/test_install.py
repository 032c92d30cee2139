"""The install a user gets: one import name, and a README whose examples run as written.

Every example runs in a fresh interpreter with the repository root as its working directory and
on `sys.path`, which is where a user who just cloned stands (`python -c`, `python -m`, a notebook).
"""

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONSAFEPATH", None)  # a user's shell keeps the working directory on sys.path
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_no_top_level_folder_shadows_an_installed_distribution():
    """A folder at the repository root wins over an installed package of the same name."""
    provided = importlib.metadata.packages_distributions()
    folders = [p.name for p in ROOT.iterdir() if p.is_dir() and p.name.isidentifier()]
    modules = [p.stem for p in ROOT.glob("*.py")]
    clashes = {name: provided[name] for name in folders + modules if set(provided.get(name, ())) - {"sparsediff"}}
    assert not clashes, f"top-level names that installed distributions also provide: {clashes}"
    assert "kernels" in provided, "transformers requires Hugging Face's kernels: the check above needs it installed"


def test_only_the_package_is_importable_from_the_root():
    importable = [p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert importable == ["sparsediff"]


def test_diffusers_imports_its_kernels_from_the_repository_root():
    """The failure users met: `from kernels import ...` inside diffusers found our folder."""
    done = _run([sys.executable, "-c", "import kernels, diffusers.loaders.peft; print(kernels.__file__)"], 300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "site-packages" in done.stdout


def test_readme_has_the_examples_this_file_runs():
    assert len(_blocks("python")) >= 2
    assert any("sparsediff" in block for block in _blocks("bash"))


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_readme_python_block_runs_as_written(index):
    done = _run([sys.executable, "-c", _blocks("python")[index]], 600)
    assert done.returncode == 0, f"README python block {index} failed:\n{done.stderr[-3000:]}"


def test_module_help_from_the_repository_root():
    done = _run([sys.executable, "-m", "sparsediff", "--help"], 300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generate" in done.stdout


def _sparsediff_commands() -> list[list[str]]:
    """The README's shell lines that call `sparsediff` (continuations joined, comments dropped)."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "sparsediff":
                commands.append(words)
    return commands


@pytest.mark.slow
def test_readme_shell_examples_run_as_written(tmp_path):
    commands = _sparsediff_commands()
    assert commands, "the README has no sparsediff command to run"
    workdir = tmp_path / "readme"
    workdir.mkdir()
    for words in commands:
        # The commands write their outputs (searched.json, search-report/) where they run.
        done = subprocess.run(
            [str(BIN / "sparsediff"), *words[1:]],
            cwd=workdir,
            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{shlex.join(words)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
