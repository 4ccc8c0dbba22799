"""Every number pfit reports is the number pyhf reports: the shared compilation against
pyhf run directly, on job orders and patches chosen to break it.

The warm-worker tests run ``transforms/pyhf_fit.py --serve`` (the process the pilot keeps
in its container) on the host, one job after another, so that a template or a compilation
made for one job is reused by the next, exactly as in a pilot. The reference is pyhf
0.7.6 called directly, numpy backend, with no hpcaf code in its path, in a process of its
own that fits while the warm worker does (two cores: the test takes the longer of the two,
not their sum).
"""

from __future__ import annotations

import copy
import gzip
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, Harvester, make_harvester

MODIFIERS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
TOLERANCE = 1e-4


@pytest.fixture(scope="session")
def pallets() -> Path:
    root = Path(os.environ.get("HPCAF_PALLETS") or REPO.parent / "shared" / "data" / "pallets")
    if not (root / "sbottom" / "RegionA").is_dir():
        pytest.fail(f"pallets not found under {root}: set HPCAF_PALLETS")
    return root


def pallet(pallets: Path, name: str) -> tuple[Path, Path]:
    folder = pallets / name
    return folder / "BkgOnly.json", folder / "patchset.json.gz"


def read(path: Path) -> Any:
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


_FITTED: dict[tuple[str, str, str], tuple[float, list[float]]] = {}
"""The reference process's memory: a patch fitted for one test is not fitted again."""


def reference(workspace: Path, patchset: Path, names: list[str]) -> dict[str, Any]:
    """pyhf directly: the patch applied to the whole workspace (``PatchSet.apply``), which for
    patches writing only under ``/channels`` is ``Workspace.model(patches=[patch])``."""
    import pyhf

    pyhf.set_backend("numpy")
    spec = read(workspace)
    by_name = {p["metadata"]["name"]: p for p in read(patchset)["patches"]}
    out = {}
    for name in names:
        key = (str(workspace), str(patchset), name)
        if key not in _FITTED:
            patched = pyhf.Workspace(pyhf.patchset.Patch(by_name[name]).apply(spec))
            model = patched.model(modifier_settings=MODIFIERS)
            obs, exp = pyhf.infer.hypotest(
                1.0, patched.data(model), model, test_stat="qtilde", return_expected_set=True
            )
            _FITTED[key] = (float(obs), [float(x) for x in exp])
        out[name] = _FITTED[key]
    return out


class Reference:
    """Reference fits in a separate process, started before the warm worker's jobs."""

    def __init__(self) -> None:
        # spawned, not forked: the test process may hold JAX's threads
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=context)

    def start(self, workspace: Path, patchset: Path, names: list[str]) -> Future[dict[str, Any]]:
        return self.pool.submit(reference, workspace, patchset, names)

    def __call__(self, workspace: Path, patchset: Path, names: list[str]) -> dict[str, Any]:
        return self.start(workspace, patchset, names).result()


@pytest.fixture(scope="module")
def pyhf_directly() -> Iterator[Reference]:
    fits = Reference()
    yield fits
    fits.pool.shutdown(cancel_futures=True)


def assert_matches(results: dict[str, Any], expected: dict[str, Any]) -> None:
    for name, (obs, exp) in expected.items():
        entry = results[name]
        assert entry["status"] == "ok", (name, entry)
        assert abs(entry["CLs_obs"] - obs) < TOLERANCE, (name, entry["CLs_obs"], obs)
        worst = max(abs(a - b) for a, b in zip(entry["CLs_exp"], exp, strict=True))
        assert worst < TOLERANCE, (name, entry["CLs_exp"], exp)


class WarmTransform:
    """``pyhf_fit.py --serve`` on the host, fed one job after another (as the pilot does).

    ``preamble`` runs in the worker before it serves (used to force a fallback path).
    """

    def __init__(self, tmp: Path, preamble: str = "") -> None:
        self.tmp = tmp
        self.jobs = 0
        code = (
            f"import sys; sys.path.insert(0, {str(REPO / 'transforms')!r})\n"
            "import pyhf_fit\n"
            f"{preamble}\n"
            "sys.exit(pyhf_fit.serve())\n"
        )
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(
        self,
        workspace: Path,
        patchset: Path,
        names: list[str],
        backend: str = "jax",
        fitter: str = "scipy",
    ) -> tuple[int, dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.jobs += 1
        workdir = self.tmp / f"job_{self.jobs}"
        workdir.mkdir()
        job = {
            "transform_args": {
                "workspace": str(workspace),
                "patchset": str(patchset),
                "backend": backend,
                "poi_value": 1.0,
                "test_stat": "qtilde",
                "fitter": fitter,
            },
            "job_parameters": {"patches": names},
        }
        (workdir / "job.json").write_text(json.dumps(job))
        self.proc.stdin.write(json.dumps({"workdir": str(workdir)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the warm worker died:\n{self.log(workdir)}"
        code = json.loads(line)["exit_code"]
        results = json.loads((workdir / "results.json").read_text())
        return code, results

    def log(self, workdir: Path) -> str:
        path = workdir / "payload.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def warm(tmp_path: Path) -> Iterator[WarmTransform]:
    worker = WarmTransform(tmp_path)
    yield worker
    worker.close()


SBOTTOM_ORDER = [
    ["sbottom_300_205_60", "sbottom_350_345_60"],
    ["sbottom_400_205_60"],
    ["sbottom_400_280_150"],
]
"""The order in which a warm worker once reported the second patch's CLs for the third."""


SINGLE_FIRST = [
    ["sbottom_400_280_150"],  # everything compiled in
    ["sbottom_400_205_60"],  # differs from it: a wider compilation
    ["sbottom_600_280_150", "sbottom_350_345_60"],
    ["sbottom_400_280_150"],  # the first again, now on the wider compilation
]
"""A one-patch job first, so that the template has every value compiled in."""


@pytest.mark.parametrize("order", [SBOTTOM_ORDER, SINGLE_FIRST], ids=["reported", "single-first"])
def test_single_patch_jobs_after_a_multi_patch_job_in_one_warm_worker(
    warm: WarmTransform, pyhf_directly: Reference, pallets: Path, order: list[list[str]]
) -> None:
    workspace, patchset = pallet(pallets, "sbottom/RegionA")
    expected = pyhf_directly.start(workspace, patchset, [n for names in order for n in names])
    results: dict[str, Any] = {}
    for names in order:
        code, document = warm.run(workspace, patchset, names)
        assert code == 0, document
        assert all(document[n]["path"] == "shared" for n in names), document
        assert_matches(document, {n: expected.result()[n] for n in names})
        results.update(document)
    assert results["sbottom_400_280_150"]["CLs_obs"] < 1e-6, "not the previous patch's value"


def test_sbottom_sample_in_jobs_of_mixed_sizes(
    warm: WarmTransform, pyhf_directly: Reference, pallets: Path
) -> None:
    """Region B then C then B again in one worker: templates of several pallets side by side,
    jobs of 3, 1 and 2 patches, and a patch fitted again in a job of another size."""
    region_b = pallet(pallets, "sbottom/RegionB")
    region_c = pallet(pallets, "sbottom/RegionC")
    names_b = [p["metadata"]["name"] for p in read(region_b[1])["patches"]]
    names_c = [p["metadata"]["name"] for p in read(region_c[1])["patches"]]
    b_first, b_single, b_again = names_b[5:8], names_b[-1], [names_b[40], names_b[6]]
    c_single = names_c[17]
    expected_b = pyhf_directly.start(*region_b, [*b_first, b_single, names_b[40]])
    expected_c = pyhf_directly.start(*region_c, [c_single])
    seen: dict[str, dict[str, Any]] = {}
    for (workspace, patchset), names in [
        (region_b, b_first),
        (region_c, [c_single]),
        (region_b, [b_single]),
        (region_b, b_again),
    ]:
        code, document = warm.run(workspace, patchset, names)
        assert code == 0, document
        key = str(patchset)
        seen.setdefault(key, {}).update(document)
        if names == b_again:
            again = document[names_b[6]]["CLs_obs"]
    assert_matches(seen[str(region_b[1])], expected_b.result())
    assert_matches(seen[str(region_c[1])], expected_c.result())
    assert abs(again - seen[str(region_b[1])][names_b[6]]["CLs_obs"]) < TOLERANCE


def test_zero_yield_padding_on_1lbb(
    warm: WarmTransform, pyhf_directly: Reference, pallets: Path
) -> None:
    """1Lbb patches whose signal leaves channels out: normfactor, lumi and staterror land
    on padded zero-yield samples of the shared structure."""
    workspace, patchset = pallet(pallets, "1Lbb")
    by_name = {p["metadata"]["name"]: p for p in read(patchset)["patches"]}
    names = ["C1N2_Wh_hbb_1000_0", "C1N2_Wh_hbb_190_60", "C1N2_Wh_hbb_535_400"]
    channels = [len(by_name[n]["patch"]) for n in names]
    assert channels == [8, 3, 4], "the first covers every channel, the others leave some out"
    expected = pyhf_directly.start(workspace, patchset, names)
    code, results = warm.run(workspace, patchset, names)
    assert code == 0, results
    assert all(results[n]["path"] == "shared" for n in names)
    assert_matches(results, expected.result())


def _patchset_with(patchset: Path, out: Path, extra: list[dict[str, Any]]) -> Path:
    document = read(patchset)
    document["patches"] = [*document["patches"], *extra]
    out.write_text(json.dumps(document))
    return out


def _variant(source: dict[str, Any], name: str, *ops: dict[str, Any]) -> dict[str, Any]:
    patch = copy.deepcopy(source)
    patch["metadata"] = {"name": name, "values": [900 + len(name), 1]}
    patch["patch"] = [*patch["patch"], *ops]
    return patch


def test_a_group_that_cannot_be_aligned_is_fitted_plain(
    warm: WarmTransform, pyhf_directly: Reference, pallets: Path, tmp_path: Path
) -> None:
    """One patch's signal carries a shapesys where another patch has no signal at all: no
    neutral padding exists, so the job's patches are fitted the plain way."""
    workspace, patchset = pallet(pallets, "staus/Region-combined")
    first = read(patchset)["patches"][0]
    odd = copy.deepcopy(first)
    odd["metadata"] = {"name": "DS_odd_shapesys", "values": [991, 1]}
    signal = odd["patch"][0]["value"]
    signal["modifiers"].append(
        {"name": "odd_shape", "type": "shapesys", "data": [0.1 * x for x in signal["data"]]}
    )
    odd["patch"] = [odd["patch"][0]]  # signal in the first channel only
    bad = _patchset_with(patchset, tmp_path / "patchset.json", [odd])
    names = [first["metadata"]["name"], "DS_odd_shapesys"]
    expected = pyhf_directly.start(workspace, bad, names)
    code, results = warm.run(workspace, bad, names)
    assert code == 0, results
    assert [results[n]["path"] for n in names] == ["plain", "plain"]
    assert_matches(results, expected.result())


def test_a_patch_pyhf_refuses_is_refused_not_fitted(
    warm: WarmTransform, pyhf_directly: Reference, pallets: Path
) -> None:
    """sbottom RegionB's sbottom_1500_1495_60 has no signal normfactor: pyhf refuses its
    model (no POI). Aligned with another patch it would gain a zero-yield mu_SIG and a
    number; it must fail as in pyhf, and its job-mate must still be right."""
    import pyhf

    workspace, patchset = pallet(pallets, "sbottom/RegionB")
    names = ["sbottom_1500_1495_60", "sbottom_1500_1250_60"]
    by_name = {p["metadata"]["name"]: p for p in read(patchset)["patches"]}
    expected = pyhf_directly.start(workspace, patchset, names[1:])
    with pytest.raises(pyhf.exceptions.InvalidModel):
        pyhf.Workspace(read(workspace)).model(patches=[pyhf.patchset.Patch(by_name[names[0]])])
    code, results = warm.run(workspace, patchset, names)
    assert code == 65, results
    refused = results[names[0]]
    assert refused["status"] == "failed" and refused["path"] == "plain", refused
    assert "InvalidModel" in refused["message"] and "mu_SIG" in refused["message"]
    assert results[names[1]]["path"] == "shared"
    assert_matches({names[1]: results[names[1]]}, expected.result())


def test_a_structure_mismatch_in_a_warm_worker_falls_back_to_plain(
    tmp_path: Path, pyhf_directly: Reference, pallets: Path
) -> None:
    """The JAX template is made (on purpose) from a model of another structure: the worker
    notices, fits plain, and the next job of that worker is still right."""
    preamble = (
        "_build = pyhf_fit.build_template\n"
        "def build_template(spec):\n"
        "    spec = dict(spec, channels=spec['channels'][:-1])\n"
        "    return _build(spec)\n"
        "pyhf_fit.build_template = build_template\n"
    )
    worker = WarmTransform(tmp_path, preamble)
    try:
        workspace, patchset = pallet(pallets, "staus/Region-combined")
        names = ["DS_100_1_Staus", "DS_160_40_Staus"]
        expected = pyhf_directly.start(workspace, patchset, names)
        code, first = worker.run(workspace, patchset, names[:1])
        assert code == 0 and first[names[0]]["path"] == "plain", first
        code, second = worker.run(workspace, patchset, names[1:])
        assert code == 0 and second[names[1]]["path"] == "plain", second
        assert "shared compilation unavailable" in worker.log(tmp_path / "job_1")
    finally:
        worker.close()
    assert_matches({**first, **second}, expected.result())


def test_patches_that_change_the_measurement(
    warm: WarmTransform, pyhf_directly: Reference, pallets: Path, tmp_path: Path
) -> None:
    """A fixed nuisance parameter and a narrower POI range, written by the patch into
    ``/measurements``, take effect exactly as in pyhf; they share a job and a worker with
    patches that do not, before and after."""
    workspace, patchset = pallet(pallets, "staus/Region-combined")
    source = next(p for p in read(patchset)["patches"] if p["metadata"]["name"] == "DS_120_1_Staus")
    parameters = "/measurements/0/config/parameters/-"
    fixed = _variant(
        source,
        "DS_120_1_fixed_jes",
        {
            "op": "add",
            "path": parameters,
            "value": {"name": "JET_GroupedNP_2", "fixed": True, "inits": [1.0]},
        },
    )
    bounded = _variant(
        source,
        "DS_120_1_poi_bound",
        {"op": "add", "path": parameters, "value": {"name": "mu_SIG", "bounds": [[0.0, 1.2]]}},
    )
    changed = _patchset_with(patchset, tmp_path / "patchset.json", [fixed, bounded])
    jobs = [
        ["DS_120_1_Staus", "DS_140_1_Staus"],
        ["DS_120_1_fixed_jes", "DS_120_1_Staus", "DS_120_1_poi_bound"],
        ["DS_120_1_Staus"],
        ["DS_120_1_fixed_jes"],
    ]
    fitted = pyhf_directly.start(
        workspace, changed, list(dict.fromkeys(n for names in jobs for n in names))
    )
    results: dict[str, list[dict[str, Any]]] = {}
    for names in jobs:
        code, document = warm.run(workspace, changed, names)
        assert code == 0, document
        for name in names:
            results.setdefault(name, []).append(document[name])
    expected = fitted.result()
    for name, entries in results.items():
        for entry in entries:
            assert_matches({name: entry}, {name: expected[name]})
    plain = expected["DS_120_1_Staus"][0]
    assert abs(expected["DS_120_1_fixed_jes"][0] - plain) > 10 * TOLERANCE, (
        "the fixed parameter changes the result, so the test can tell"
    )


def test_numpy_backend_and_jax_agree_in_one_worker(
    warm: WarmTransform, pyhf_directly: Reference, pallets: Path
) -> None:
    workspace, patchset = pallet(pallets, "sbottom/RegionA")
    names = ["sbottom_600_280_150", "sbottom_500_205_60"]
    fitted = pyhf_directly.start(workspace, patchset, names)
    code, on_numpy = warm.run(workspace, patchset, names, backend="numpy")
    assert code == 0 and {e["path"] for e in on_numpy.values()} == {"plain"}
    code, on_jax = warm.run(workspace, patchset, names[::-1], backend="jax")
    assert code == 0 and {e["path"] for e in on_jax.values()} == {"shared"}
    expected = fitted.result()
    assert_matches(on_numpy, expected)
    assert_matches(on_jax, expected)
    assert {e["device"] for e in on_jax.values()} == {"cpu"}


@pytest.fixture(scope="module")
def one_pilot(
    tmp_path_factory: pytest.TempPathFactory,
    module_database_env: dict[str, str],
) -> Iterator[Harvester]:
    from tests.helpers import ensure_image, harvester_settings

    cache = Path(os.environ.get("HPCAF_TEST_IMAGE_CACHE") or REPO / ".cache" / "images")
    ensure_image(cache, "base.def", "base")
    ensure_image(cache, "pyhf.def", "pyhf")
    h = make_harvester(
        tmp_path_factory.mktemp("truth"),
        cache,
        harvester_settings(max_workers=1),
        # the pilot waits between the tasks, so that its warm worker serves all three
        {**module_database_env, "HPCAF_PILOT_MAX_IDLE_S": "120"},
    )
    yield h
    h.cleanup()


@pytest.mark.e2e
def test_the_reported_order_through_a_harvester_with_one_pilot(
    one_pilot: Harvester, pyhf_directly: Reference, pallets: Path
) -> None:
    """The order from the report, as a user ran it: ``maxWorkers = 1``, so one pilot and
    one warm fit worker serve the three pfit tasks one after another."""
    workspace, patchset = pallet(pallets, "sbottom/RegionA")
    fitted = pyhf_directly.start(workspace, patchset, [n for names in SBOTTOM_ORDER for n in names])
    results: dict[str, Any] = {}
    for names in SBOTTOM_ORDER:
        args = ["--workspace", str(workspace), "--patchset", str(patchset), "--backend", "jax"]
        for name in names:
            args += ["--patch", name]
        done = one_pilot.cli(
            "harvester.client.pfit",
            *args,
            "--patchesPerJob",
            str(len(names)),
            "--wait",
            timeout=600,
        )
        assert done.returncode == 0, done.output
        task_id = int(done.stdout.split("jediTaskID=")[1].split()[0])
        results.update(json.loads(one_pilot.pbook("results", str(task_id), "--json").stdout))
    workers = one_pilot.query("SELECT count(DISTINCT worker_id) FROM jobs")[0][0]
    assert workers == 1, "one pilot ran every job"
    assert_matches(results, fitted.result())


def test_json_spec_copies_build_the_same_model_as_deepcopy(pallets: Path) -> None:
    """The fast copy of a specification inside pyhf.Model (``JsonCopy``) against pyhf's own
    ``copy.deepcopy``: same structure key, same leaves, same data, same spec; and inputs it
    cannot copy exactly (a tuple, a NaN, a key that is not a string) go to deepcopy."""
    import math
    from contextlib import nullcontext

    import numpy as np

    sys.path.insert(0, str(REPO / "transforms"))
    import pyhf
    import pyhf_fit  # type: ignore[import-not-found]
    import pyhf_shared  # type: ignore[import-not-found]

    folder = pallets / "1Lbb"
    background = json.loads((folder / "BkgOnly.json").read_text())
    with gzip.open(folder / "patchset.json.gz") as fh:
        patchset = json.load(fh)
    text = json.dumps(background)
    patches = [pyhf.patchset.Patch(p) for p in patchset["patches"][:3]]
    specs = pyhf_shared.align_specs(
        background, [p.apply(json.loads(text), in_place=True) for p in patches]
    )
    pyhf.set_backend("numpy")
    fast = [pyhf_fit.build_model(spec) for spec in specs]
    original = pyhf_fit.json_spec_copies
    try:
        pyhf_fit.json_spec_copies = nullcontext
        plain = [pyhf_fit.build_model(spec) for spec in specs]
    finally:
        pyhf_fit.json_spec_copies = original
    for (model_f, data_f), (model_p, data_p) in zip(fast, plain, strict=True):
        key_f, leaves_f = pyhf_shared.analyse(model_f)
        key_p, leaves_p = pyhf_shared.analyse(model_p)
        assert key_f == key_p and data_f == data_p and model_f.spec == model_p.spec
        assert all(
            a == b and np.array_equal(x, y)
            for (a, x), (b, y) in zip(leaves_f, leaves_p, strict=True)
        )
    assert fast[0][0].spec is not specs[0], "pyhf still gets a copy of its own"
    kept = pyhf_fit.JsonCopy.deepcopy({"a": (1, 2)})
    assert kept == {"a": (1, 2)}, "a tuple stays a tuple"
    nan = pyhf_fit.JsonCopy.deepcopy({"a": [math.nan]})
    assert math.isnan(nan["a"][0])
    assert pyhf_fit.JsonCopy.deepcopy({1: "x"}) == {1: "x"}, "an int key stays an int"


STAUS_BATCH = [
    "DS_100_1_Staus",  # CLs 0.22
    "DS_120_40_Staus",
    "DS_140_1_Staus",
    "DS_160_100_Staus",  # CLs 0.84: the POI's free fit well inside its bounds
    "DS_160_1_Staus",
    "DS_160_40_Staus",
    "DS_160_80_Staus",  # its fits end stalled, not below the gradient tolerance
    "DS_180_1_Staus",  # CLs 5e-4
    "DS_200_1_Staus",
]
"""Nine patches: a full chunk of eight and one padded to eight with copies of itself."""


def test_batched_fits_match_pyhf_and_a_second_job_reuses_them(
    warm: WarmTransform, pyhf_directly: Reference, pallets: Path
) -> None:
    """``fitter: batched``: the patches of a structure fitted together inside JAX (a BFGS
    vectorised over patches, every Asimov free fit with the POI at its bound) give pyhf's
    numbers; a second job in the same worker reuses the compilation with other leaves."""
    workspace, patchset = pallet(pallets, "staus/Region-combined")
    expected = pyhf_directly.start(workspace, patchset, STAUS_BATCH)
    code, first = warm.run(workspace, patchset, STAUS_BATCH[:7], fitter="batched")
    assert code == 0, first
    code, second = warm.run(workspace, patchset, STAUS_BATCH[7:], fitter="batched")
    assert code == 0, second
    results = {**first, **second}
    batched = [n for n in STAUS_BATCH if results[n].get("fitter") == "batched"]
    assert len(batched) >= 8, results  # any other went one at a time, and is checked too
    assert "fitted together" in warm.log(warm.tmp / "job_2")
    assert_matches(results, expected.result())


def test_batched_fits_that_do_not_converge_are_fitted_one_at_a_time(
    tmp_path: Path, pyhf_directly: Reference, pallets: Path
) -> None:
    """Three evaluations are never enough: every patch falls back to pyhf's own fits, and
    the numbers are still pyhf's."""
    worker = WarmTransform(tmp_path, "import pyhf_batched\npyhf_batched.MAX_EVALUATIONS = 3\n")
    try:
        workspace, patchset = pallet(pallets, "staus/Region-combined")
        names = STAUS_BATCH[:2]
        expected = pyhf_directly.start(workspace, patchset, names)
        code, results = worker.run(workspace, patchset, names, fitter="batched")
        assert code == 0, results
        assert all("fitter" not in results[n] for n in names), results
        assert all(results[n]["path"] == "shared" for n in names), results
        assert "0 of 2 patches fitted together" in worker.log(tmp_path / "job_1")
    finally:
        worker.close()
    assert_matches(results, expected.result())


def test_a_later_job_leaves_the_warm_worker_s_templates_as_they_are(pallets: Path) -> None:
    """A warm worker keeps its JAX templates across jobs. Each job builds its per-patch
    models with numpy and switches pyhf's backend there and back; pyhf then re-makes
    every live model's tensors for the new backend, twice, and a worker that served many
    jobs paid that for every template it kept, in every job. The templates must come out
    of a later job's preparation untouched (their tensors the same objects), and still be
    JAX tensors. (That their fits stay right is checked against pyhf directly by the
    warm-worker tests above, which run jobs one after another in one worker.)"""
    import jax

    sys.path.insert(0, str(REPO / "transforms"))
    import pyhf
    import pyhf_fit  # type: ignore[import-not-found]

    workspace, patchset = pallet(pallets, "sbottom/RegionA")
    background = read(workspace)
    by_name = {p["metadata"]["name"]: p for p in read(patchset)["patches"]}

    def prepare(names: list[str]) -> Any:
        patches = [pyhf.patchset.Patch(by_name[name]) for name in names]
        return pyhf_fit._prepare_shared(background, pyhf.Workspace(background), patches)

    pyhf.set_backend("jax")
    saved = dict(pyhf_fit._WARM)
    pyhf_fit._WARM.update({"serving": True, "shared": None})
    try:
        first = prepare(SBOTTOM_ORDER[0])
        templates = [s.template for s in first.models.structures.values()]
        before = [t.main_model.nominal_rates for t in templates]
        prepare(SBOTTOM_ORDER[1] + SBOTTOM_ORDER[2])
        after = [t.main_model.nominal_rates for t in templates]
        assert all(a is b for a, b in zip(before, after, strict=True)), (
            "a later job's preparation re-made the kept templates' tensors"
        )
        assert all(isinstance(a, jax.Array) for a in after)
        assert pyhf.get_backend()[0].name == "jax"
    finally:
        shared = pyhf_fit._WARM["shared"]
        if shared is not None:
            shared.uninstall()
        pyhf_fit._WARM.clear()
        pyhf_fit._WARM.update(saved)
        pyhf.set_backend("numpy")


WATCH_THE_COLLECTOR = """
import gc, json, pyhf, weakref
_collections = []
gc.callbacks.append(lambda phase, info: phase == "stop" and _collections.append(info["generation"]))
class _Cycle:
    pass
_left = []
_job_run = pyhf_fit.run
def _run_watched(job):
    before = list(_collections)
    _collections.clear()
    paused = not gc.isenabled()
    earlier_cycle_freed = all(ref() is None for ref in _left)
    cycle = _Cycle()
    cycle.me = cycle  # garbage only a collection frees, made during the job
    _left.append(weakref.ref(cycle))
    del cycle
    out = _job_run(job)
    _run_watched.seen = {"paused": paused, "collections": list(_collections),
                         "between_jobs": before, "earlier_cycle_freed": earlier_cycle_freed}
    return out
pyhf_fit.run = _run_watched
_job_main = pyhf_fit.main
def _main_watched(argv=None):
    code = _job_main(argv)
    shared = pyhf_fit._WARM["shared"]
    templates = {id(s.template) for s in shared.structures.values()} if shared else set()
    models = sum(isinstance(o, pyhf.pdf.Model) for o in gc.get_objects())
    with open("collector.json", "w") as fh:
        json.dump({**_run_watched.seen, "enabled_after": gc.isenabled(),
                   "models": models, "templates": len(templates)}, fh)
    return code
pyhf_fit.main = _main_watched
"""


def test_a_job_pauses_the_collector_and_leaves_no_numpy_model_behind(
    tmp_path: Path, pyhf_directly: Reference, pallets: Path
) -> None:
    """The cyclic garbage collector is paused while a job runs (its full collections cost a
    staus job a sixth of its time): no collection during the job, the per-patch numpy
    models freed all the same (a warm worker keeps only its JAX templates after a job),
    a reference cycle made during one job freed before the next starts (the worker
    collects between jobs), and the numbers still pyhf's."""
    worker = WarmTransform(tmp_path, WATCH_THE_COLLECTOR)
    try:
        workspace, patchset = pallet(pallets, "sbottom/RegionA")
        names = SBOTTOM_ORDER[0] + SBOTTOM_ORDER[1]
        expected = pyhf_directly.start(workspace, patchset, names)
        results: dict[str, Any] = {}
        for job in (SBOTTOM_ORDER[0], SBOTTOM_ORDER[1]):
            code, found = worker.run(workspace, patchset, job)
            assert code == 0, found
            results.update(found)
            watched = json.loads((tmp_path / f"job_{worker.jobs}" / "collector.json").read_text())
            assert watched["paused"] and watched["enabled_after"], watched
            assert watched["collections"] == [], watched
            assert watched["templates"] >= 1
            assert watched["models"] == watched["templates"], watched
        assert 2 in watched["between_jobs"], watched  # a full collection between the jobs
        assert watched["earlier_cycle_freed"], watched
    finally:
        worker.close()
    assert_matches(results, expected.result())
