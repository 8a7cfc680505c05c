"""The package's import arrows run downwards only, so the architecture reads from the tree.

    entry points, cli  ->  ddpm  ->  clip  ->  training, diffusion, evaluation  ->  models, data  ->  errors

A module may import its own folder and anything in a lower layer; nothing imports an entry point.
Lazy imports inside functions count too: an arrow is an arrow wherever it is written.
"""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "clip_ddpm"
ENTRY_POINTS = {"train", "sample", "train_clip", "embed", "similarity"}
LAYER = {"errors": 0, "data": 1, "models": 1, "diffusion": 2, "evaluation": 2, "training": 2,
         "clip": 3, "ddpm": 4, "cli": 5, **{name: 6 for name in ENTRY_POINTS}}


def _unit(module: str) -> str:
    """The folder (or top-level module) a dotted clip_ddpm module belongs to."""
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: pathlib.Path) -> list[str]:
    """Every clip_ddpm module `path` imports (`from clip_ddpm import x` counts as clip_ddpm.x)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("clip_ddpm.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "clip_ddpm":
                found += [f"clip_ddpm.{a.name}" for a in node.names]
            elif node.module.startswith("clip_ddpm."):
                found.append(node.module)
    return found


def forbidden_arrows(package: pathlib.Path = PACKAGE) -> list[str]:
    arrows = []
    for path in sorted(package.rglob("*.py")):
        source = "clip_ddpm." + ".".join(path.relative_to(package).with_suffix("").parts)
        source_unit = _unit(source.removesuffix(".__init__"))
        for target in _imports(path):
            target_unit = _unit(target)
            same_folder = source_unit == target_unit and source_unit not in ENTRY_POINTS
            if target_unit in ENTRY_POINTS or not (same_folder or LAYER[target_unit] < LAYER[source_unit]):
                arrows.append(f"{source} -> {target}")
    return arrows


def test_every_folder_has_a_layer():
    units = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0]
             for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    assert units <= set(LAYER), f"folders without a layer: {units - set(LAYER)}"


def test_imports_run_downwards_only():
    assert forbidden_arrows() == []


def test_the_check_sees_forbidden_arrows(tmp_path):
    files = {"data/shapes.py": "def f():\n    from clip_ddpm.clip.encoder import CLIPEncoder\n",
             "clip/encoder.py": "from clip_ddpm.data import shapes\nfrom clip_ddpm import sample\n",
             "training/loop.py": "from clip_ddpm.training import parallel\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert forbidden_arrows(tmp_path) == ["clip_ddpm.clip.encoder -> clip_ddpm.sample",
                                          "clip_ddpm.data.shapes -> clip_ddpm.clip.encoder"]


def test_trainers_parse_flags_before_importing_numerical_libraries():
    import subprocess
    import sys

    probe = ("import sys, clip_ddpm.train_clip; "
             "print(sorted(n for n in ('jax', 'flax', 'optax', 'transformers', 'tensorflow') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert out.strip() == "[]"
