"""The data flow of the README, checked on the imports: no module reaches back up the chain."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}

#: module -> project modules it must never import (directly, at any place in the file)
FORBIDDEN = {
    "dataset": PROJECT - {"dataset", "errors"},
    "models": PROJECT - {"models"},
    "dataset3D": PROJECT - {"dataset", "dataset3D", "errors"},
    "tracking": PROJECT - {"dataset", "errors", "tracking"},
    "metrics": PROJECT - {"dataset", "errors", "metrics"},
    "inference": {"training", "predict", "cli", "main", "results", "figures", "tracking", "utils"},
    "tiled": PROJECT - {"dataset", "errors", "tiled"},
    "results": {"training", "predict", "cli", "main", "inference", "models", "metrics"},
    "predict": {"training", "cli", "main", "metrics"},
    "figures": PROJECT - {"dataset", "errors", "figures"},
    "training": {"cli", "main"},
    "distributed": {"training", "predict", "scaleout", "results", "cli", "main"},
    "scaleout": {"training", "cli", "main", "metrics"},
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_reaches_up_the_chain(layer):
    files = [ROOT / f"{layer}.py"] if (ROOT / f"{layer}.py").is_file() else sorted((ROOT / layer).glob("*.py"))
    assert files
    for path in files:
        bad = imports(path) & FORBIDDEN[layer]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_tracking_and_the_predictor_load_no_plotting_and_no_training():
    code = ("import sys, tracking, results, predict; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib'; assert 'training' not in sys.modules, 'training'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
