"""The MLflow UI as a user sees it: a store filled by a user's fit and `depth eval`, read in
headless Chromium (Debian's ``chromium``, driven by Playwright; no browser is downloaded).

Used by tests/tracking/test_mlflow_ui.py and scripts/ui_screenshot.py.

MLflow's UI is a React single-page app: every read waits for content (a text that appears
once the page's data has arrived), never a fixed sleep. MLflow 3.17 may open an experiment
in its GenAI view; ``MODEL_TRAINING`` (``?workflowType=machine_learning``) opens the
"Model training" view, the one with Runs and Models.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_TRAINING = "?workflowType=machine_learning"
# As root Chromium needs --no-sandbox; without the rest it hangs on a closed network
# (it keeps trying to reach Google's services).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars"]
MODEL_CLASS = "tests.support.outsider_gpt:LitNanoGPT"
FAST_EVAL = ["--batch-sizes", "1", "--prompt-tokens", "4", "--new-tokens", "4", "--repeats",
             "2", "--min-window-s", "0.02", "--idle-s", "0", "--loss-batches", "0",
             "--remeasures", "0"]


def chromium_path() -> str | None:
    """Debian's Chromium, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class FilledStore:
    """What the UI should show: one fit, its checkpoint's LoggedModel, an eval of it."""

    uri: str
    experiment_id: str
    run_id: str
    model_id: str
    model_name: str
    checkpoint: str
    record: dict[str, Any]
    evaluation: dict[str, Any]

    def url(self, page: str = "") -> str:
        """The experiment's `page` (``runs/ID``, ``models``, ``models/m-...``) in the
        Model training view."""
        return f"{self.uri}/#/experiments/{self.experiment_id}/{page}{MODEL_TRAINING}"


def fill_store(root: Path, uri: str, experiment: str = "depth-ui") -> FilledStore:
    """A user's nanoGPT-style module trained 4 steps with DepthCallback and an MLFlowLogger
    on `uri` (one checkpoint, so one LoggedModel), then `depth eval` of that checkpoint."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import MLFlowLogger

    from depth import DepthCallback
    from depth.cli import main
    from tests.doubles.meters import ClockMeter
    from tests.support.outsider_gpt import LitNanoGPT, TokenWindows

    logger = MLFlowLogger(experiment_name=experiment, run_name="tiny-gpt", tracking_uri=uri)
    text = Path(json.__file__).read_bytes()[:6000]
    loader = torch.utils.data.DataLoader(TokenWindows(text, 16), batch_size=4)
    callback = DepthCallback(ClockMeter({"gpu:0": 250.0, "cpu:0": 40.0}))
    trainer = pl.Trainer(
        max_steps=4, logger=logger, default_root_dir=root, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[callback, ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=4,
                                             save_top_k=-1)])
    trainer.fit(LitNanoGPT(block_size=16, n_layer=1, n_head=2, n_embd=32), loader)
    (checkpoint,) = sorted((root / "ckpt").glob("*.ckpt"))
    (_, model_id), = callback.logged_models
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["eval", str(checkpoint), "--model-class", MODEL_CLASS, *FAST_EVAL,
                       "--json", "--tracking-uri", uri])
    if status != 0:
        raise RuntimeError(f"depth eval exited {status}: {out.getvalue()[-2000:]}")
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return FilledStore(
        uri=uri, run_id=logger.run_id, model_id=model_id, checkpoint=str(checkpoint),
        experiment_id=client.get_run(logger.run_id).info.experiment_id,
        model_name=client.get_logged_model(model_id).name,
        record=torch.load(checkpoint, weights_only=True)["depth"],
        evaluation=json.loads(out.getvalue()))


@contextlib.contextmanager
def chromium_page(width: int = 1600, height: int = 1100) -> Iterator[Any]:
    """A Playwright page in a fresh headless Chromium (a new profile each time)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium is not installed (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


# MLflow's design system draws a placeholder ("skeleton") where data is still loading.
_NOTHING_LOADING = "() => !document.querySelector('[class*=\"skeleton\" i]')"
# A LoggedModel page draws its attributes first and its metrics table (which waits for the
# source run) a moment later, under "Metrics (0)": depth always logs metrics on a model.
LOGGED_MODEL_METRICS = re.compile(r"Metrics \([1-9]\d*\)")


def open_page(page: Any, url: str, *ready: str | re.Pattern[str],
              timeout_s: float = 60.0) -> None:
    """Loads `url` and waits until every `ready` text is shown and nothing is loading.

    Pick texts that arrive with the data the test reads: e.g. a model's ID and
    ``LOGGED_MODEL_METRICS`` on its page. (Waiting for the network to go idle does not
    work: MLflow's UI keeps polling.)
    """
    page.goto(url)
    wait_ready(page, *ready, timeout_s=timeout_s)


def wait_ready(page: Any, *ready: str | re.Pattern[str], timeout_s: float = 60.0) -> None:
    """Waits until every `ready` text is shown and nothing is loading (see `open_page`)."""
    for text in ready:
        page.get_by_text(text).first.wait_for(timeout=timeout_s * 1000)
    page.wait_for_function(_NOTHING_LOADING, timeout=timeout_s * 1000)


def close_assistant(page: Any) -> None:
    """Closes MLflow's Assistant side panel where it is open (it takes a third of the
    screen in a fresh profile)."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()


# True once every column whose header is drawn has its cells drawn in every row. (ag-grid
# writes a cell's col-id HTML-escaped, a header's as it is: compare them unescaped.)
_CELLS_DRAWN = """() => {
    const id = e => e.getAttribute('col-id').replaceAll('&quot;', '"');
    const cols = [...document.querySelectorAll('.ag-header-viewport .ag-header-cell[col-id]')]
        .map(id);
    return [...document.querySelectorAll('.ag-center-cols-container .ag-row[row-index]')]
        .every(row => {
            const drawn = new Set([...row.querySelectorAll('.ag-cell[col-id]')].map(id));
            return cols.every(col => drawn.has(col));
        });
}"""


def _drawn(page: Any) -> None:
    """Waits until the grid has drawn the cells of the columns in view (it draws the
    headers first, the cells a frame or a debounce later)."""
    page.wait_for_function(_CELLS_DRAWN, timeout=15_000)


def grid_columns(page: Any) -> dict[str, list[str]]:
    """Every column of the page's ag-grid table, header -> cell texts by row.

    The grid draws only the columns in view, so this scrolls it sideways as a user would
    and collects each column once it has been drawn.
    """
    found: dict[str, str] = {}  # col-id -> header
    cells: dict[tuple[str, int], str] = {}
    position = -1
    while True:
        _drawn(page)
        headers = page.locator(".ag-header-cell[col-id]").evaluate_all(
            "els => els.map(e => [e.getAttribute('col-id'), e.innerText.trim()])")
        found.update({html.unescape(col): text for col, text in headers})
        for col, row, text in page.locator(".ag-row[row-index] .ag-cell[col-id]").evaluate_all(
                "els => els.map(e => [e.getAttribute('col-id'), "
                "Number(e.closest('.ag-row').getAttribute('row-index')), e.innerText.trim()])"):
            cells[(html.unescape(col), row)] = text
        moved = page.evaluate("""() => {
            const bar = document.querySelector('.ag-body-horizontal-scroll-viewport');
            if (!bar) return -1;
            bar.scrollLeft = bar.scrollLeft + Math.max(100, bar.clientWidth / 2);
            bar.dispatchEvent(new Event('scroll'));
            return bar.scrollLeft; }""")
        if moved <= position:
            break
        position = moved
    rows = sorted({row for _, row in cells})
    return {found[col]: [cells.get((col, row), "") for row in rows] for col in found}


def scroll_grid_to(page: Any, pattern: str) -> str | None:
    """Scrolls the grid sideways until the first column whose header matches `pattern` (a
    JavaScript regular expression, case-insensitive) is the first one after the pinned
    columns; returns that header, or None where no column matches."""
    return page.evaluate("""async (pattern) => {
        const match = new RegExp(pattern, 'i');
        const bar = document.querySelector('.ag-body-horizontal-scroll-viewport');
        const frame = () => new Promise(r => requestAnimationFrame(() =>
            requestAnimationFrame(r)));
        for (let last = -1; bar && bar.scrollLeft > last; ) {
            const cell = [...document.querySelectorAll('.ag-header-viewport .ag-header-cell')]
                .find(e => match.test(e.innerText.trim()));
            if (cell) {
                bar.scrollLeft = parseFloat(cell.style.left) || cell.offsetLeft;
                bar.dispatchEvent(new Event('scroll'));
                await frame();
                return cell.innerText.trim();
            }
            last = bar.scrollLeft;
            bar.scrollLeft = last + Math.max(100, bar.clientWidth / 2);
            bar.dispatchEvent(new Event('scroll'));
            await frame();
        }
        return null; }""", pattern)
