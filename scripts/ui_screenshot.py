"""Screenshots of the MLflow UI showing a trained model's depth (docs/img/*.png).

Usage:
    python scripts/ui_screenshot.py [--out docs/img] [--keep STORE_DIR]

Starts ``mlflow server`` on 127.0.0.1, trains a tiny nanoGPT-style model with DepthCallback
and an MLFlowLogger on it (one checkpoint: one LoggedModel), runs ``depth eval`` of that
checkpoint (tokens/Wh on the LoggedModel), and takes headless Chromium screenshots
(Debian's ``chromium``, driven by Playwright: ``pip install -e .[ui]``) of the run page, the
LoggedModel page and the experiment's Models view, each once its data is shown. Look at
them: the energy, its unit, the method and tokens/Wh must be readable.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--keep", type=Path, default=None, help="store folder to keep")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from tests.support.mlflow_server import mlflow_server
    from tests.support.mlflow_ui import (
        LOGGED_MODEL_METRICS, chromium_page, close_assistant, fill_store, open_page,
        scroll_grid_to, wait_ready)

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        with mlflow_server(root / "server", timeout_s=240) as uri:
            store = fill_store(root, uri, experiment="depth-demo")
            shots = [(f"runs/{store.run_id}", [store.run_id, "energy/joules"], "mlflow-run.png"),
                     (f"models/{store.model_id}", [store.model_id, LOGGED_MODEL_METRICS],
                      "mlflow-logged-model.png"),
                     ("models", [store.model_name], "mlflow-models.png")]
            with chromium_page(height=1300) as page:
                for where, ready, name in shots:
                    open_page(page, store.url(where), *ready)
                    close_assistant(page)  # then wait again: the page lays itself out anew
                    wait_ready(page, *ready)
                    if where == "models":  # the energy columns, right of the attributes
                        scroll_grid_to(page, "kwh")
                    page.screenshot(path=args.out / name)
                    print(f"wrote {args.out / name}: {store.url(where)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
