"""What a user reads in the MLflow UI, in a real browser: a real `mlflow server` on
127.0.0.1, filled by a Lightning fit with DepthCallback and an MLFlowLogger (its checkpoint
is a LoggedModel) and by `depth eval` of that checkpoint; the LoggedModel page and the
experiment's Models view rendered by headless Chromium (Debian's package).

One server, one fit, one eval and one browser serve every assertion.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.support.mlflow_ui import (
    LOGGED_MODEL_METRICS, chromium_page, chromium_path, fill_store, grid_columns, open_page)
from tests.support.mlflow_server import mlflow_server

pytestmark = pytest.mark.slow

NUMBER = r"(\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?)"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    if chromium_path() is None:
        pytest.skip("chromium not found (Debian: apt-get install chromium; .ci/run does)")
    root = tmp_path_factory.mktemp("mlflow-ui")
    # a busy machine (CI, 2 shared cores) can take minutes to start a server
    with mlflow_server(root / "server", timeout_s=240) as uri:
        yield fill_store(root, uri)


@pytest.fixture(scope="module")
def browser(store):
    with chromium_page() as page:
        yield page


@pytest.fixture(scope="module")
def model_page(store, browser):
    """The LoggedModel page's text, as rendered."""
    open_page(browser, store.url(f"models/{store.model_id}"), store.model_id,
              LOGGED_MODEL_METRICS)
    return browser.inner_text("body")


@pytest.fixture(scope="module")
def models_view(store, browser):
    """The experiment's Models view: header -> cell texts (one row: the one checkpoint)."""
    open_page(browser, store.url("models"), store.model_name)
    return grid_columns(browser)


def shown_with_unit(text: str, unit: str) -> list[float]:
    """Every figure shown as 'NUMBER UNIT' in `text`."""
    return [float(n.replace(",", "")) for n in
            re.findall(NUMBER + r"\s*" + re.escape(unit) + r"(?![\w/])", text)]


def agrees(shown: float, exact: float) -> bool:
    """`shown` is `exact` rounded for display to 3 significant digits or more (rounding to 3
    digits is off by at most 0.5 %)."""
    return math.isclose(shown, exact, rel_tol=6e-3)


def test_the_logged_model_page_shows_kwh_with_its_unit(store, model_page):
    kwh = store.record["train_joules"] / 3.6e6
    shown = shown_with_unit(model_page, "kWh")
    assert any(agrees(v, kwh) for v in shown), \
        f"no '{kwh:.3g} kWh' on the LoggedModel page (figures shown in kWh: {shown})"


def test_the_logged_model_page_shows_the_method(store, model_page):
    assert store.record["method"] == "test-clock"  # the meter the fit was given
    assert "test-clock" in model_page, "the method is not on the LoggedModel page"


def test_the_logged_model_page_shows_tokens_per_wh_after_eval(store, model_page):
    tokens_per_wh = store.evaluation["tokens_per_wh"]
    shown = shown_with_unit(model_page, "tokens/Wh")
    assert any(agrees(v, tokens_per_wh) for v in shown), \
        f"no '{tokens_per_wh:,.0f} tokens/Wh' on the LoggedModel page (shown: {shown})"


def _column(columns: dict[str, list[str]], pattern: str) -> tuple[str, str]:
    """(header, the one row's cell) of the first column whose header matches `pattern`."""
    for header, cells in columns.items():
        if re.search(pattern, header, re.IGNORECASE):
            return header, cells[0]
    raise AssertionError(f"no column matching {pattern!r} in the Models view: "
                         f"{sorted(columns)}")


def test_the_models_view_has_the_model_with_kwh_and_tokens_per_wh(store, models_view):
    (name,) = models_view["Model name"]
    assert store.model_name in name
    header, cell = _column(models_view, r"kwh")
    assert agrees(float(cell.replace(",", "")), store.record["train_joules"] / 3.6e6), \
        (header, cell)
    header, cell = _column(models_view, r"tokens_per_wh$|tokens/wh")
    assert agrees(float(cell.replace(",", "")), store.evaluation["tokens_per_wh"]), \
        (header, cell)


def test_the_models_view_has_the_method(store, models_view):
    header, cell = _column(models_view, r"method")
    assert cell == "test-clock", (header, cell)
