"""Small public helpers: `check_accuracy` (the CTC measures), checkpoints, seeding, device choice."""
from __future__ import annotations

from metrics import check_accuracy  # noqa: F401  (the public face of metrics.py)
