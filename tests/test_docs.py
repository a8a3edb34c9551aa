"""Docs that cannot rot (issue #38): every ```bash and ```python block of README.md and docs/ runs, and every
relative link in them resolves.

The scheme, for writers, is in docs/development.md ("Tested docs"). In short:

* Each block runs alone, in a fresh temporary folder (never the repository) that holds the stand-ins of
  :func:`standins`: small trained runs and images under the names the docs use (``runs/c10-cpvt``,
  ``cat.jpg``, ...), and links to the repository's ``.venv``, ``scripts/`` and ``benchmarks/``.
* A ```python block is executed in a fresh namespace. A ```bash block runs line by line (a trailing ``\\``
  joins lines): a line that starts with ``cpvt`` goes through ``cpvt.cli.main`` in this process (what the
  console script calls, without a new interpreter per line), any other line through ``bash``; each must exit 0.
* An HTML comment on the line just above the fence changes how the block runs, visibly in the markdown:
  ``<!-- test: slow -->`` keeps it to the slow tier (``make test-slow``), ``<!-- test: reduced OLD => NEW -->``
  runs it with the literal text OLD replaced by NEW (fewer epochs, a smaller model), several replacements
  separated by ``;``; ``<!-- test: slow; reduced ... -->`` does both. ``$REPO`` is the repository in a block's
  environment. Blocks that are not commands (output, usage synopses, layouts) are ```text and do not run.
* docs/results/ is left out: its pages are reports a sweep writes, with commands that take hours.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpvt.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SKIPPED_DIRS = {"results"}  # docs/results/: sweep reports (see the module docstring)
PAGES = [REPO / "README.md", *sorted(p for p in DOCS.rglob("*.md")
                                     if not SKIPPED_DIRS & set(p.relative_to(DOCS).parts[:-1]))]
RUNNABLE = {"bash", "python"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")
SHARED_DATA = REPO.parent / "shared" / "data"  # the project's datasets (camvid, imagenette, cifar10), if present
LINKED = (".venv", "scripts", "benchmarks")  # read-only tools a block may call by their repository path
TINY = ["--set", "model.depth=6", "--set", "model.embed_dim=16", "--set", "model.num_heads=2",
        "--set", "workers=0", "--set", "amp=off"]


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it starts, its language and text, and its marker's directives."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    slow: bool = False
    replacements: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        page = self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page.name
        return f"{page}:{self.line}"

    def text(self) -> str:
        """The code as the test runs it: the marker's replacements applied, each of which must match."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise AssertionError(f"{self.id}: the marker replaces {old!r}, which is not in the block")
            code = code.replace(old, new)
        return code


def parse_marker(text: str, where: str) -> tuple[bool, tuple[tuple[str, str], ...]]:
    """``slow`` and ``reduced OLD => NEW`` directives of a ``<!-- test: ... -->`` comment, ``;``-separated."""
    slow, replacements = False, []
    for part in (p.strip() for p in text.split(";")):
        if part == "slow" or part.startswith("slow "):
            slow = True
        elif part.startswith("reduced ") and "=>" in part:
            old, new = (s.strip() for s in part[len("reduced "):].split("=>", 1))
            replacements.append((old, new))
        elif part:
            raise ValueError(f"{where}: unknown test directive {part!r} (known: slow, reduced OLD => NEW)")
    return slow, tuple(replacements)


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page`` with its marker (the comment on the line just above the fence)."""
    lines, found, i = page.read_text(encoding="utf-8").splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: a code fence is never closed")
        marker = MARKER.match(lines[i - 1]) if i else None
        slow, replacements = parse_marker(marker[1], f"{page}:{i}") if marker else (False, ())
        found.append(Block(page, i + 1, m[1], "\n".join(lines[i + 1:end]) + "\n", slow, replacements))
        i = end + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]
DEFAULT_TIER = [b for b in ALL if b.lang in RUNNABLE and not b.slow]
SLOW_TIER = [b for b in ALL if b.lang in RUNNABLE and b.slow]


# -- stand-ins ---------------------------------------------------------------------------------------------------------
def _shapes(root: Path, size: int, per_class: int, val_per_class: int, classes: int = 10, seed: int = 0) -> Path:
    """An ImageNet-layout folder of coloured squares and discs, one colour per class."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, (classes, 3))
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _shape_image(rng, size, size, colours[c], disc=c % 2 == 1).save(root / split / f"class{c}" / f"{i}.png")
    return root


def _shape_image(rng, h: int, w: int, colour, disc: bool = False) -> Image.Image:
    img = np.full((h, w, 3), int(rng.integers(0, 80)), np.uint8)
    r = max(2, min(h, w) // 4)
    cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
    yy, xx = np.ogrid[:h, :w]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r if disc else (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    img[inside] = colour
    return Image.fromarray(img)


def _frames(root: Path, h: int, w: int, counts: dict[str, int]) -> Path:
    """A mask folder (images/<split>/, masks/<split>/, classes.txt): a box and a bar on a background."""
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        for kind in ("images", "masks"):
            (root / kind / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            mask = np.zeros((h, w), np.uint8)
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            mask[y:y + h // 3, x:x + w // 3] = 1
            col = int(rng.integers(0, w - w // 8))
            mask[:, col:col + w // 8] = 2
            image = np.array([(90, 90, 90), (220, 40, 40), (40, 60, 220)], np.uint8)[mask]
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("background\nbox\nbar\n")
    return root


def _cli(*args) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in args])
    assert rc == 0, f"cpvt {' '.join(map(str, args))} exited {rc}"


def _foreign_weights(root: Path) -> None:
    """Weights in other projects' layouts under the names models.md uses: the small Twins-PCPVT (timm) and CvT
    (transformers; renamed to microsoft/CvT's keys) of the fixtures in tests/data/, and a random ``deit_tiny``."""
    from safetensors.torch import save_file
    from test_pyramids import DATA, _fixture, _prefixed, _to_ms

    import cpvt

    twins, _ = _fixture(DATA / "timm_twins_fixture.safetensors")
    torch.save(_prefixed(twins, "pcpvt.state."), root / "twins_pcpvt_small.pth")
    cvt, _ = _fixture(DATA / "hf_cvt_fixture.safetensors")
    save_file({k: v.contiguous() for k, v in _prefixed(cvt, "state.").items()}, str(root / "model.safetensors"))
    torch.save(_to_ms(_prefixed(cvt, "state.")), root / "CvT-13-224x224-IN-1k.pth")
    torch.save(cpvt.create_model("deit_tiny").state_dict(), root / "deit_tiny.pth")


@pytest.fixture(scope="session")
def standins(tmp_path_factory) -> Path:
    """A folder with what the docs' blocks assume is already there, made in a few seconds:

    * ``runs/c10-cpvt``, ``runs/shapes``, ``runs/c10-deit``: ``cpvt_micro`` (the first two) and ``deit_micro``
      cut to 6 blocks of width 16, trained 1 epoch at 32 px on a small folder of 10 shape classes;
    * ``runs/camvid-peg``, ``runs/camvid-crops``: ``cpvt_micro`` cut the same way, a segmentation run on
      120x160 frames of 3 classes (train, val and test splits), 2 blocks;
    * ``cat.jpg`` and ``photos/`` (32 px shapes), ``street.jpg`` and ``frames/`` (120x160 frames);
    * ``my_images/`` and ``my_masks/``: the folders those runs were trained on (ImageNet layout, mask folder);
    * foreign weights (:func:`_foreign_weights`).
    """
    root = tmp_path_factory.mktemp("standins")
    work = tmp_path_factory.mktemp("standin-data")
    shapes = _shapes(work / "shapes", 32, per_class=4, val_per_class=2)
    common = ["--epochs", 1, "--batch-size", 16, "--cache-dir", work / "cache", *TINY]
    _cli("train", "--model", "cpvt_micro", "--data", shapes, "--out", root / "runs/c10-cpvt", *common)
    _cli("train", "--model", "deit_micro", "--data", shapes, "--out", root / "runs/c10-deit", *common)
    shutil.copytree(root / "runs/c10-cpvt", root / "runs/shapes")
    frames = _frames(work / "frames", 120, 160, {"train": 4, "val": 2, "test": 2})
    _cli("train", "--model", "cpvt_micro", "--data", frames, "--set", "img_size=[120,160]", "--out",
         root / "runs/camvid-peg", *common, "--set", "model.depth=2", "--batch-size", 4)  # 2 blocks: tested up to 360x480
    shutil.copytree(root / "runs/camvid-peg", root / "runs/camvid-crops")
    rng = np.random.default_rng(1)
    (root / "photos").mkdir()
    (root / "frames").mkdir()
    _shape_image(rng, 32, 32, (200, 60, 60)).save(root / "cat.jpg")
    for i in range(2):
        _shape_image(rng, 40, 40, (60, 200, 60), disc=True).save(root / "photos" / f"{i}.jpg")
        shutil.copy(frames / "images" / "test" / f"{i:03d}.png", root / "frames" / f"{i}.png")
    Image.open(frames / "images" / "val" / "000.png").convert("RGB").save(root / "street.jpg")
    shutil.copytree(shapes, root / "my_images")
    shutil.copytree(frames, root / "my_masks")
    _foreign_weights(root)
    (root / ".cache").mkdir()  # shared by every block (CPVT_CACHE_DIR): a dataset is extracted once a session
    return root


@pytest.fixture
def workdir(standins, tmp_path, monkeypatch) -> Path:
    """A fresh folder for one block: a copy of the stand-ins, links to the repository's tools, as the cwd."""
    shutil.copytree(standins, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".cache"))
    for name in LINKED:
        if (REPO / name).exists():
            (tmp_path / name).symlink_to(REPO / name)
    monkeypatch.chdir(tmp_path)
    if SHARED_DATA.is_dir() and "CPVT_DATA_ROOT" not in os.environ:
        monkeypatch.setenv("CPVT_DATA_ROOT", str(SHARED_DATA))
    if "CPVT_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("CPVT_CACHE_DIR", str(standins / ".cache"))
    return tmp_path


# -- running a block ---------------------------------------------------------------------------------------------------
def commands(code: str) -> list[str]:
    """A bash block's commands: continuation lines joined, blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def run_bash(block: Block, cwd: Path) -> None:
    env = {**os.environ, "REPO": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for line in commands(block.text()):
        words = shlex.split(line, comments=True)
        if words and words[0] == "cpvt" and not set(line) & set("|;&<>$`"):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(words[1:])
                except SystemExit as e:  # argparse: a bad flag or option
                    rc = e.code
            assert rc in (0, None), (f"{block.id}: `{line}` exited {rc}\n{out.getvalue()[-2000:]}\n"
                                     f"{err.getvalue()[-3000:]}")
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=cwd, env=env, text=True,
                              capture_output=True, timeout=1800)
        assert proc.returncode == 0, (f"{block.id}: `{line}` exited {proc.returncode}\n"
                                      f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def run_python(block: Block) -> None:
    code = compile(block.text(), block.id, "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, {"__name__": "__docs__"})  # noqa: S102 - the docs' own example, run as a reader would


def run_block(block: Block, cwd: Path) -> None:
    for name in ("camvid", "imagenette", "cifar10"):  # a block that names a shared dataset needs it
        if re.search(rf"--data {name}\b", block.text()) and not (os.environ.get("CPVT_DATA_ROOT") or SHARED_DATA.is_dir()):
            pytest.skip(f"{block.id} needs the {name} archive (../shared/data or CPVT_DATA_ROOT)")
    t0 = time.perf_counter()
    if block.lang == "python":
        run_python(block)
    else:
        run_bash(block, cwd)
    print(f"{block.id}: {time.perf_counter() - t0:.1f} s")


@pytest.mark.parametrize("block", DEFAULT_TIER, ids=lambda b: b.id)
def test_docs_block_runs(block, workdir):
    run_block(block, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("block", SLOW_TIER, ids=lambda b: b.id)
def test_docs_slow_block_runs(block, workdir):
    run_block(block, workdir)


# -- the scheme itself ---------------------------------------------------------------------------------------------
def test_every_block_is_runnable_or_text_and_every_marker_is_used():
    """A block is bash, python or text (illustration), and a marker sits above a runnable block."""
    langs = {b.id: b.lang for b in ALL}
    odd = {k: v for k, v in langs.items() if v not in RUNNABLE | {"text", "toml", "json"}}
    assert not odd, f"code blocks must be bash, python (run by this test) or text (not run): {odd}"
    for b in ALL:
        if b.slow or b.replacements:
            assert b.lang in RUNNABLE, f"{b.id}: a test marker above a {b.lang or 'plain'} block"
            b.text()  # every replacement matches
    assert len(DEFAULT_TIER) > 10 and SLOW_TIER


def test_a_broken_block_fails(tmp_path, monkeypatch):
    """The harness fails on a command that fails, in both languages, and on a replacement that does not match."""
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "page.md"
    page.write_text("<!-- test: reduced --epochs 9 => --epochs 1 -->\n```bash\ncpvt models 'nope_*'\n```\n\n"
                    "```python\nimport cpvt\ncpvt.create_model('nope')\n```\n\n"
                    "```bash\nfalse\n```\n\n```text\nnot run\n```\n")
    bash, python, shell, text = blocks(page)
    assert text.lang == "text" and bash.replacements == (("--epochs 9", "--epochs 1"),)
    with pytest.raises(AssertionError, match="not in the block"):
        run_bash(bash, tmp_path)
    with pytest.raises(AssertionError, match="exited 1"):
        run_bash(Block(page, 2, "bash", bash.code), tmp_path)
    with pytest.raises(ValueError, match="unknown model"):
        run_python(python)
    with pytest.raises(AssertionError, match="`false` exited 1"):
        run_bash(shell, tmp_path)
    with pytest.raises(ValueError, match="unknown test directive"):
        parse_marker("fast", "here")


# -- links -------------------------------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _prose(page: Path) -> str:
    """The page without its code blocks and inline code, where a link is not a link."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(_prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: links that do not resolve: {broken}"


def test_readme_is_short():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= 250, f"README.md has {n} lines; the long form belongs in docs/"
