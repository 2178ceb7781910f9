"""Model layer figures: build time per variant, preprocess time on VGA frames, CPU latency.

Run: ``python bench/models.py [--models-dir DIR]``. Prints one line per variant.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from faillite.catalog import load_catalog
from faillite.config import packaged_config
from faillite.models.build import build_models
from faillite.models.preprocess import preprocess
from workers.backends.ort import OnnxRuntimeBackend, OnnxRuntimeBackendConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, help="default: a fresh temporary folder")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    catalog = load_catalog(packaged_config("catalog.yaml"))
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="faillite-models-"))
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    backend = OnnxRuntimeBackend(OnnxRuntimeBackendConfig(intra_op_threads=args.threads))
    print(f"{'variant':<20}{'build s':>9}{'preproc ms':>12}{'load ms':>9}{'infer p50 ms':>14}")
    for v in catalog.variants():
        t0 = time.perf_counter()
        build_models(catalog, models_dir, [v.name], force=True, progress=False)
        build_s = time.perf_counter() - t0
        pre = []
        for _ in range(50):
            t = time.perf_counter()
            batch = preprocess(frame, v.preprocess)
            pre.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        model = backend.load(v.name, models_dir / v.file)
        load_ms = (time.perf_counter() - t) * 1000
        inf = []
        for _ in range(30):
            t = time.perf_counter()
            model.infer(batch)
            inf.append((time.perf_counter() - t) * 1000)
        print(
            f"{v.name:<20}{build_s:>9.2f}{statistics.median(pre):>12.2f}{load_ms:>9.0f}"
            f"{statistics.median(inf):>14.1f}"
        )


if __name__ == "__main__":
    main()
