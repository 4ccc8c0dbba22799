"""Shared fixtures: the base image (built once), and real harvester processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
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
    prebuild_image,
)


@pytest.fixture(scope="session")
def image_cache() -> Path:
    """The image cache with ``base`` built from containers/base.def (reused between runs)."""
    cache = Path(os.environ.get("HPCAF_TEST_IMAGE_CACHE") or REPO / ".cache" / "images")
    if shutil.which("debootstrap") is None and shutil.which("apptainer") is None:
        pytest.fail("building the base image needs debootstrap (make test installs it)")
    ensure_image(cache, "base.def", "base")
    return cache


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=("sqlite", "postgresql"),
        default=os.environ.get("HPCAF_TEST_DATABASE", "sqlite"),
        help="the database of every test that does not pick one: a SQLite file per test "
        "(default), or a fresh database per test on a throw-away PostgreSQL server on "
        "loopback (scripts/postgres). Also set by HPCAF_TEST_DATABASE.",
    )


IN_PROCESS_DATABASE = frozenset({"database_url", "session_factory", "session"})
"""Fixtures through which a test runs SQL itself, on the database of the pass."""

POSTGRESQL_ONLY = "postgres_databases"
"""The fixture behind every test written for PostgreSQL alone (``postgres_database_url``)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Which pass runs what, so that the second pass costs only what it can find.

    * The SQLite pass runs everything but the tests written for PostgreSQL alone.
    * The PostgreSQL pass runs the tests whose outcome can depend on the database: those
      running SQL themselves (``IN_PROCESS_DATABASE``), those written for PostgreSQL, and
      those marked ``database`` (concurrent writers, races, restarts, bulk paths, how
      database errors reach the API). End-to-end tests where the database only carries
      state between processes ran in the first pass.
    """
    on_postgresql = config.getoption("--database") == "postgresql"
    skip_here = pytest.mark.skip(reason="written for PostgreSQL: runs in the PostgreSQL pass")
    skip_there = pytest.mark.skip(reason="does not depend on the database: ran in the SQLite pass")
    for item in items:
        fixtures = set(item.fixturenames)
        postgresql_only = POSTGRESQL_ONLY in fixtures
        if not on_postgresql:
            if postgresql_only:
                item.add_marker(skip_here)
        elif not (
            postgresql_only or fixtures & IN_PROCESS_DATABASE or item.get_closest_marker("database")
        ):
            item.add_marker(skip_there)


IMAGES_BY_TEST_FILE = {
    "test_executor.py": ("pyhf.def", "pyhf"),
    "test_fit.py": ("pyhf.def", "pyhf"),
    "test_fit_truth.py": ("pyhf.def", "pyhf"),
    "test_phpo.py": ("hpo.def", "hpo"),
    "test_multinode.py": ("mpi.def", "mpi"),
}
"""The large images some test files need: built in the background from the start of the
session (``tests.helpers.prebuild_image``), while the tests before them run."""


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    wanted = {
        IMAGES_BY_TEST_FILE[item.path.name]
        for item in session.items
        if item.path.name in IMAGES_BY_TEST_FILE
        and not any(mark.name == "skip" for mark in item.iter_markers())
    }
    if not wanted:
        return
    cache = Path(os.environ.get("HPCAF_TEST_IMAGE_CACHE") or REPO / ".cache" / "images")
    for definition, name in sorted(wanted):
        prebuild_image(cache, definition, name)


def pytest_report_header(config: pytest.Config) -> str:
    return f"database: {config.getoption('--database')}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How much the API fuzzing tried, when it ran (a figure for docs/reliability.md)."""
    fuzz = sys.modules.get("tests.test_fuzz_api")
    tally: Counter[str] = getattr(fuzz, "TALLY", Counter())
    if not tally:
        return
    by_class = {k: v for k, v in tally.items() if k.endswith("xx")}
    operations = len(tally) - len(by_class)
    terminalreporter.write_line(
        f"API fuzzing: {sum(by_class.values())} requests over {operations} operations; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(by_class.items()))
    )


def on_postgres(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--database") == "postgresql")


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database for this test, on the database ``--database`` names."""
    if on_postgres(request):
        new_database: Callable[[], str] = request.getfixturevalue("postgres_databases")
        return new_database()
    return f"sqlite:///{tmp_path / 'unit.db'}"


@pytest.fixture
def harvester_factory(
    request: pytest.FixtureRequest, tmp_path: Path, image_cache: Path
) -> Iterator[Callable[..., Harvester]]:
    """Start harvester processes; each gets its own database unless the test gives one."""
    started: list[Harvester] = []
    # requested now, so that the databases are dropped after the harvesters stopped
    new_database: Callable[[], str] | None = (
        request.getfixturevalue("postgres_databases") if on_postgres(request) else None
    )

    def start(
        config_text: str | None = None, serve_args: tuple[str, ...] = (), **env: str
    ) -> Harvester:
        if "HPCAF_DATABASE_URL" not in env and new_database is not None:
            env["HPCAF_DATABASE_URL"] = new_database()
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
def session_factory(database_url: str):  # type: ignore[no-untyped-def]
    """A migrated database (see ``--database``) and its session maker."""
    from db.engine import make_engine, make_sessionmaker
    from db.migrate import upgrade

    engine = make_engine(database_url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def session(session_factory):  # type: ignore[no-untyped-def]
    with session_factory() as s:
        yield s


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where ``tests.browser.shot`` keeps screenshots, exported as ``$HPCAF_SCREENSHOTS``.

    When the variable is set (``make screenshots`` sets docs/screenshots), that
    folder; otherwise a folder under pytest's basetemp, so the test suite leaves
    the tracked screenshots in docs/screenshots/ as it found them.
    """
    from tests.browser import SCREENSHOTS_VARIABLE

    configured = os.environ.get(SCREENSHOTS_VARIABLE)
    folder = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SCREENSHOTS_VARIABLE, str(folder))
        yield folder


@pytest.fixture(scope="module")
def browser(screenshots: Path) -> Iterator[Any]:
    """Headless Chromium driven by chromedriver (Debian's chromium and chromium-driver);
    its screenshots go to ``screenshots``."""
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


class PostgresDatabases:
    """Fresh databases on the test server, each dropped by :meth:`drop_all`."""

    def __init__(self, server: str) -> None:
        self.server = server
        # no pool: a test may restart the server (an outage) under a pooled connection
        self.admin = create_engine(
            f"{server}/postgres", isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        self.names: list[str] = []

    def new(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        self.names.append(name)
        return f"{self.server}/{name}"

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.names:
                conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        self.admin.dispose()


@pytest.fixture
def postgres_databases(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Make fresh databases on the test server; all are dropped after the test."""
    databases = PostgresDatabases(postgres_server)
    yield databases.new
    databases.drop_all()


@pytest.fixture(scope="module")
def module_database_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment that points a module's shared harvester at ``--database``."""
    if not on_postgres(request):
        yield {}
        return
    databases = PostgresDatabases(request.getfixturevalue("postgres_server"))
    yield {"HPCAF_DATABASE_URL": databases.new()}
    databases.drop_all()


@pytest.fixture
def postgres_database_url(postgres_databases: Callable[[], str]) -> str:
    """A fresh PostgreSQL database for a test that needs PostgreSQL whatever ``--database``."""
    return postgres_databases()


SLURM_DIR = Path(os.environ.get("HPCAF_SLURM_DIR", "/tmp/hpcaf-slurm-tests"))


@pytest.fixture(scope="session")
def slurm_conf() -> Iterator[Path]:
    """The Slurm dev cluster (two nodes), up for the session: its ``slurm.conf``."""
    env = {**os.environ, "HPCAF_SLURM_DIR": str(SLURM_DIR)}
    up = subprocess.run(
        [str(REPO / "scripts" / "slurm-cluster"), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    yield SLURM_DIR / "slurm.conf"
    subprocess.run(
        [str(REPO / "scripts" / "slurm-cluster"), "down"], env=env, capture_output=True, timeout=120
    )
