"""pfit end to end on real pallets: CLs against pyhf run directly, the reference value,
the plot's contours, failed fits, and bad inputs.

The pallets are read from ``HPCAF_PALLETS`` (default ``../shared/data/pallets``).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, Harvester, ensure_image, harvester_settings, make_harvester

pytestmark = pytest.mark.e2e

MODIFIERS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
STAUS_SUBSET = [
    "DS_100_1_Staus",
    "DS_120_1_Staus",
    "DS_140_1_Staus",
    "DS_160_1_Staus",
    "DS_120_40_Staus",
    "DS_140_40_Staus",
    "DS_160_40_Staus",
]


@pytest.fixture(scope="session")
def pallets() -> Path:
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    if not (root / "staus").is_dir():
        pytest.fail(f"pallets not found under {root}: set HPCAF_PALLETS")
    return root


@pytest.fixture(scope="session")
def staus(pallets: Path) -> tuple[Path, Path]:
    folder = pallets / "staus" / "Region-combined"
    return folder / "BkgOnly.json", folder / "patchset.json.gz"


@pytest.fixture(scope="session")
def fit_images(image_cache: Path) -> Path:
    """The pyhf image (built from containers/pyhf.def once; minutes the first time)."""
    ensure_image(image_cache, "pyhf.def", "pyhf")
    return image_cache


@pytest.fixture(scope="module")
def hv(
    tmp_path_factory: pytest.TempPathFactory,
    fit_images: Path,
    module_database_env: dict[str, str],
) -> Iterator[Harvester]:
    home = tmp_path_factory.mktemp("fit")
    h = make_harvester(
        home,
        fit_images,
        harvester_settings(max_workers=2, compile_cache=home / "site-compilations"),
        module_database_env,
    )
    yield h
    h.cleanup()


def direct_pyhf(workspace: Path, patchset: Path, names: list[str]) -> dict[str, Any]:
    """pyhf run directly, in this process, as an analyst would (numpy backend)."""
    import pyhf

    pyhf.set_backend("numpy")
    ws = pyhf.Workspace(json.loads(workspace.read_text()))
    with gzip.open(patchset) as fh:
        ps = pyhf.PatchSet(json.load(fh))
    out = {}
    for name in names:
        model = ws.model(patches=[ps[name]], modifier_settings=MODIFIERS)
        obs, exp = pyhf.infer.hypotest(
            1.0, ws.data(model), model, test_stat="qtilde", return_expected_set=True
        )
        out[name] = (float(obs), [float(x) for x in exp])
    return out


def pfit(h: Harvester, *args: str, timeout: float = 900) -> Any:
    return h.cli("harvester.client.pfit", *args, timeout=timeout)


def test_staus_subset_matches_pyhf_and_plots(
    hv: Harvester, staus: tuple[Path, Path], tmp_path: Path
) -> None:
    workspace, patchset = staus
    plot = tmp_path / "excl.png"
    args = [
        "--workspace",
        str(workspace),
        "--patchset",
        str(patchset),
        "--backend",
        "jax",
        "--patchesPerJob",
        "4",
        "--outDS",
        "user.alice.staus",
        "--wait",
        "--plot",
        str(plot),
    ]
    for name in STAUS_SUBSET:
        args += ["--patch", name]
    result = pfit(hv, *args)
    assert result.returncode == 0, result.output
    task_id = int(result.stdout.split("jediTaskID=")[1].split()[0])
    assert hv.task(task_id)["n_jobs"] == 2

    document = json.loads(hv.pbook("results", str(task_id), "--json").stdout)
    assert sorted(document) == sorted(STAUS_SUBSET)
    expected = direct_pyhf(workspace, patchset, STAUS_SUBSET)
    for name, (obs, exp) in expected.items():
        entry = document[name]
        assert entry["status"] == "ok" and entry["backend"] == "jax"
        assert abs(entry["CLs_obs"] - obs) < 1e-4, (name, entry["CLs_obs"], obs)
        assert max(abs(a - b) for a, b in zip(entry["CLs_exp"], exp, strict=True)) < 1e-4
        assert entry["metadata"]["name"] == name and len(entry["metadata"]["values"]) == 2
        assert entry["Fit-Time"] > 0

    # the queue's site compilation cache got the fits' compilations, in alice's folder
    site = hv.home.parent / "site-compilations"
    assert [p.name for p in site.iterdir()] == ["alice"]
    assert len(list((site / "alice" / "jax").iterdir())) > 10

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from harvester.plotting import plot_exclusion

    contours = plot_exclusion(document, tmp_path / "again.png")
    assert contours.points == len(STAUS_SUBSET)
    assert contours.observed and contours.expected, "both CLs = 0.05 contours are drawn"
    # the observed contour separates excluded (CLs < 0.05) from allowed points: it lies
    # between mst = 100 (CLs 0.22) and mst = 160 (CLs 0.001) on the mn2 = 1 row
    xs = [x for line in contours.observed for x, _ in line]
    assert 100 < min(xs) < 160


def test_1lbb_reference_value(pallets: Path, tmp_path: Path) -> None:
    """The funcX demonstration's printed value for C1N2_Wh_hbb_1000_0, through our transform."""
    sys.path.insert(0, str(REPO / "transforms"))
    from transforms import pyhf_fit

    folder = pallets / "1Lbb"
    job = {
        "transform_args": {
            "workspace": str(folder / "BkgOnly.json"),
            "patchset": str(folder / "patchset.json.gz"),
            "backend": "numpy",
            "poi_value": 1.0,
            "test_stat": "qtilde",
        },
        "job_parameters": {"patches": ["C1N2_Wh_hbb_1000_0"]},
    }
    results, ok = pyhf_fit.run(job)
    assert ok
    assert abs(results["C1N2_Wh_hbb_1000_0"]["CLs_obs"] - 0.5856783708143126) < 1e-4


def _patchset_with_broken_patch(staus: tuple[Path, Path], out: Path) -> Path:
    with gzip.open(staus[1]) as fh:
        document = json.load(fh)
    good = [p for p in document["patches"] if p["metadata"]["name"] in STAUS_SUBSET[:2]]
    bad = copy.deepcopy(good[0])
    bad["metadata"] = {"name": "broken_999_999", "values": [999, 999]}
    for op in bad["patch"]:
        if op["op"] == "add" and "data" in op["value"]:
            op["value"]["data"] = [-1e6 * x - 1e3 for x in op["value"]["data"]]
    document["patches"] = [*good, bad]
    out.write_text(json.dumps(document))
    return out


def test_failed_fit_is_a_result_and_task_finished(
    hv: Harvester, staus: tuple[Path, Path], tmp_path: Path
) -> None:
    patchset = _patchset_with_broken_patch(staus, tmp_path / "patchset.json")
    result = pfit(
        hv,
        "--workspace",
        str(staus[0]),
        "--patchset",
        str(patchset),
        "--backend",
        "numpy",
        "--patchesPerJob",
        "1",
        "--outDS",
        "user.alice.broken",
        "--wait",
    )
    assert result.returncode == 1, result.output
    task_id = int(result.stdout.split("jediTaskID=")[1].split()[0])
    assert hv.task(task_id)["status"] == "finished"
    document = json.loads(hv.pbook("results", str(task_id), "--json").stdout)
    assert document["broken_999_999"]["status"] == "failed"
    assert "FailedMinimization" in document["broken_999_999"]["message"]
    assert all(document[n]["status"] == "ok" for n in STAUS_SUBSET[:2])
    broken = [j for j in hv.jobs(task_id) if j["status"] == "failed"]
    assert len(broken) == 1 and broken[0]["attempt_nr"] == 1, "bad input is not retried"
    assert broken[0]["pilot_error_code"] == 1306


@pytest.mark.parametrize(
    "case", ["not-json", "not-workspace", "other-patchset", "no-patch", "test-stat"]
)
def test_pfit_bad_input(
    hv: Harvester, staus: tuple[Path, Path], pallets: Path, tmp_path: Path, case: str
) -> None:
    workspace, patchset = staus
    args = ["--workspace", str(workspace), "--patchset", str(patchset)]
    expected = {
        "not-json": "not JSON",
        "not-workspace": "not a pyhf workspace",
        "other-patchset": "made for another workspace",
        "no-patch": "no patch named DS_1_2_3",
        "test-stat": "not one pyhf's hypotest knows",
    }[case]
    if case == "not-json":
        bad = tmp_path / "BkgOnly.json"
        bad.write_text("{ this is not json")
        args[1] = str(bad)
    elif case == "not-workspace":
        bad = tmp_path / "BkgOnly.json"
        bad.write_text(json.dumps({"channels": "nope"}))
        args[1] = str(bad)
    elif case == "other-patchset":
        args[3] = str(pallets / "sbottom" / "RegionA" / "patchset.json.gz")
    elif case == "no-patch":
        args += ["--patch", "DS_1_2_3"]
    else:
        args += ["--test-stat", "chi2"]
    before = hv.query("SELECT count(*) FROM tasks")[0][0]
    result = pfit(hv, *args, "--outDS", "user.alice.bad")
    assert result.returncode == 2, result.output
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert hv.query("SELECT count(*) FROM tasks")[0][0] == before


def test_pallet_folder_and_tarball(staus: tuple[Path, Path], tmp_path: Path) -> None:
    """--pallet takes a folder or a HEPData-style tarball (unpacked once into a cache)."""
    import tarfile

    from harvester.client.pfit import pallet_files

    folder = staus[0].parent
    assert pallet_files(str(folder), tmp_path / "cache") == staus
    tarball = tmp_path / "pallet.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="staus/Region-combined")
    workspace, patchset = pallet_files(str(tarball), tmp_path / "cache")
    assert workspace.read_bytes() == staus[0].read_bytes()
    assert patchset.name == "patchset.json.gz"
    again = pallet_files(str(tarball), tmp_path / "cache")
    assert again == (workspace, patchset), "the second call uses the cache"


def test_gpu_fit_on_a_node_without_a_visible_gpu_fails_with_its_own_code(
    harvester_factory: Any, fit_images: Path, staus: tuple[Path, Path]
) -> None:
    """A GPU fit whose container sees no GPU fails with 1304 gpu_not_visible, not a generic
    payload failure. The GPU pilot is declared by a recorded nvidia-smi output; this machine
    has no GPU, so JAX inside the container finds only the CPU."""
    from tests.test_gpu import GPU_QUEUES, RECORDED

    h = harvester_factory(GPU_QUEUES)
    result = pfit(
        h,
        "--workspace",
        str(staus[0]),
        "--patchset",
        str(staus[1]),
        "--patch",
        STAUS_SUBSET[0],
        "--backend",
        "jax",
        "--architecture",
        "nvidia-gpu",
        "--maxAttempt",
        "1",
        "--outDS",
        "user.alice.nogpu",
    )
    assert result.returncode == 0, result.output
    task_id = int(result.stdout.split("jediTaskID=")[1].split()[0])
    h.wait_activated(task_id, 1)
    h.start_pilot("ANALY_GPU", "--nvidia-smi", str(RECORDED))
    assert h.wait_task(task_id, 180)["status"] == "failed"
    job = h.jobs(task_id)[0]
    assert job["pilot_error_code"] == 1304 and job["exit_code"] == 66


def test_adaptive_scan_on_staus_reaches_the_full_contour_with_fewer_fits(
    hv: Harvester, staus: tuple[Path, Path], tmp_path: Path
) -> None:
    """pfit --adaptive against a full campaign over the same patches: the same exclusion
    decisions for every patch next to the CLs = 0.05 contour, from fewer fits. The patches
    are the heavier half of the staus grid (m(stau) from 280 GeV, 32 of 57), which the
    contour crosses; ``bench/adaptive_scan.py`` runs whole pallets."""
    from harvester.scans.adaptive import AdaptivePlan, decisions, neighbours, normalise

    workspace, patchset = staus
    names = [
        p["metadata"]["name"]
        for p in json.loads(gzip.decompress(patchset.read_bytes()))["patches"]
        if p["metadata"]["values"][0] >= 280
    ]
    assert len(names) == 32
    common = ["--workspace", str(workspace), "--patchset", str(patchset), "--backend", "jax"]
    common += [arg for name in names for arg in ("--patch", name)]
    full_run = pfit(hv, *common, "--outDS", "user.alice.full", "--wait")
    assert full_run.returncode == 0, full_run.output
    full_id = int(full_run.stdout.split("jediTaskID=")[1].split()[0])
    full = json.loads(hv.pbook("results", str(full_id), "--json").stdout)
    adaptive_run = pfit(
        hv,
        *common,
        "--adaptive",
        "--nParallelEvaluation",
        "4",
        "--outDS",
        "user.alice.adapt",
        "--wait",
    )
    assert adaptive_run.returncode == 0, adaptive_run.output
    task_id = int(adaptive_run.stdout.split("jediTaskID=")[1].split()[0])
    with hv.api("alice") as c:
        summary = c.get(f"/api/v1/tasks/{task_id}/points").json()
    assert summary["status"] == "done"
    fitted = {p["params"]["patch"]: p["metric"] for p in summary["points"]}
    assert len(fitted) == len(summary["points"]), "no patch fitted twice"
    assert len(fitted) < len(full), f"{len(fitted)} fits for {len(full)} patches"
    assert f"adaptive scan: {len(fitted)} fits for {len(full)} patches" in adaptive_run.stdout
    for name, cls in fitted.items():
        assert abs(cls - full[name]["CLs_obs"]) < 1e-4, name

    points = {name: entry["metadata"]["values"] for name, entry in full.items()}
    truth = {name: entry["CLs_obs"] for name, entry in full.items()}
    coords = normalise(points)
    boundary = [
        name
        for name in points
        if len(
            {truth[o] < 0.05 for _, o in neighbours(coords, truth, name, 4)} | {truth[name] < 0.05}
        )
        > 1
    ]
    assert boundary, "the staus contour crosses the pallet"
    predicted = decisions(points, fitted, AdaptivePlan(initial=len(fitted)))
    wrong = [name for name in boundary if predicted[name] != (truth[name] < 0.05)]
    assert wrong == [], f"decisions differ near the contour: {wrong}"
    everywhere = sum(predicted[n] != (truth[n] < 0.05) for n in points)
    print(
        f"\nadaptive staus scan: {len(fitted)} fits for {len(points)} patches; "
        f"{len(boundary)} patches next to the contour all agree; "
        f"{everywhere} decisions differ over the whole pallet"
    )


def test_fit_task_page_shows_the_exclusion_plot(
    hv: Harvester, staus: tuple[Path, Path], browser: Any
) -> None:
    """The dashboard's fit task page: the CLs table and the exclusion plot, in Chromium."""
    from selenium.webdriver.common.by import By

    from tests.browser import login, shot, wait

    workspace, patchset = staus
    args = ["--workspace", str(workspace), "--patchset", str(patchset), "--backend", "jax"]
    for name in STAUS_SUBSET[:5]:
        args += ["--patch", name]
    result = pfit(hv, *args, "--outDS", "user.alice.page", "--wait")
    assert result.returncode == 0, result.output
    task_id = int(result.stdout.split("jediTaskID=")[1].split()[0])

    login(browser, hv, "alice")
    browser.get(f"{hv.url}/tasks/{task_id}")
    rows = browser.find_elements(By.CSS_SELECTOR, "#fit-results tbody tr")
    assert len(rows) == 5 and all(" ok" in r.text or r.text.endswith("ok") for r in rows)
    wait(
        browser,
        lambda b: b.execute_script(
            "const i = document.getElementById('plot'); return i.complete && i.naturalWidth > 0;"
        ),
    )
    width = browser.execute_script("return document.getElementById('plot').naturalWidth;")
    assert width >= 600, "the rendered exclusion plot"
    shot(browser, "fit")
