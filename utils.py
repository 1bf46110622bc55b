"""Small public helpers: `check_accuracy` (the CTC measures), checkpoints, seeding, device choice."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from dataset.ctc import atomic_path
from errors import UserError
from metrics import check_accuracy  # noqa: F401  (the public face of metrics.py)

CHECKPOINT_FORMAT = "nuclei-ctc-checkpoint/1"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save atomically: a kill during the save leaves the previous file intact."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load one of our checkpoints with weights_only=True (no pickled code runs); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds for truncated or foreign files
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a checkpoint of this project (no '{CHECKPOINT_FORMAT}' format tag)")
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Random states of torch (CPU and CUDA), numpy and Python, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                       *np_state[2:]], "python": _to_lists(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def select_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when there is a GPU; 'cuda' without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)
