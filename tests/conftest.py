"""Shared fixtures: the base image (built once), and real harvester processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.helpers import (
    PG_ENV,
    REPO,
    Harvester,
    ensure_image,
    harvester_settings,
    make_harvester,
)


@pytest.fixture(scope="session")
def image_cache() -> Path:
    """The image cache with ``base`` built from containers/base.def (reused between runs)."""
    cache = Path(os.environ.get("HPCAF_TEST_IMAGE_CACHE") or REPO / ".cache" / "images")
    if shutil.which("debootstrap") is None and shutil.which("apptainer") is None:
        pytest.fail("building the base image needs debootstrap (make test installs it)")
    ensure_image(cache, "base.def", "base")
    return cache


@pytest.fixture
def harvester_factory(tmp_path: Path, image_cache: Path) -> Iterator[Callable[..., Harvester]]:
    started: list[Harvester] = []

    def start(
        config_text: str | None = None, serve_args: tuple[str, ...] = (), **env: str
    ) -> Harvester:
        h = make_harvester(
            tmp_path / f"h{len(started)}",
            image_cache,
            config_text or harvester_settings(),
            env,
            serve_args,
        )
        started.append(h)
        return h

    yield start
    for h in started:
        h.cleanup()


@pytest.fixture
def harvester(harvester_factory: Callable[..., Harvester]) -> Harvester:
    """A harvester with ANALY_LOCAL (2 local workers) and ANALY_MANUAL (no workers)."""
    return harvester_factory()


@pytest.fixture
def session_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A migrated SQLite database file and its session maker."""
    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'unit.db'}")
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def session(session_factory):  # type: ignore[no-untyped-def]
    with session_factory() as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by chromedriver (Debian's chromium and chromium-driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(
            "the dashboard tests need chromium and chromium-driver (make test installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    env = {**os.environ, **PG_ENV}
    up = subprocess.run(
        [str(REPO / "scripts" / "postgres"), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    url = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
    yield url.rsplit("/", 1)[0]
    subprocess.run(
        [str(REPO / "scripts" / "postgres"), "down"], env=env, capture_output=True, timeout=120
    )


@pytest.fixture
def postgres_database_url(postgres_server: str) -> Iterator[str]:
    """A fresh database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    # no pool: a test may restart the server (an outage) under a pooled connection
    admin = create_engine(
        f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    yield f"{postgres_server}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()
