"""Make the project root importable from the tests; shared fixtures."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def no_zarr(monkeypatch):
    """A function that, once called, makes `import zarr` fail, as on a machine without the optional package
    (called mid-test, after the parts that need zarr)."""
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "zarr":
            raise ImportError("no zarr")
        return real_import(name, *args, **kwargs)

    return lambda: monkeypatch.setattr(builtins, "__import__", fake_import)
