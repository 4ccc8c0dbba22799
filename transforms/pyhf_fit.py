#!/usr/bin/env python3
"""pyhf_fit: fit the signal patches of a pallet, one hypothesis test each.

Runs inside the fit image (pyhf, numpy, scipy, jax). Reads ``job.json``
(written by the pilot): the background-only workspace and the patchset are
staged in as files, ``job_parameters.patches`` names the patches of this job.
Each patched model uses the interpolation codes of the funcX demonstration
(normsys code4, histosys code4p) and gets
``pyhf.infer.hypotest(poi, data, model, test_stat, return_expected_set=True)``.

Writes ``results.json``: ``{patch: {metadata, CLs_obs, CLs_exp, Fit-Time,
backend, device, status}}``; a patch whose fit fails is recorded with
``status: failed`` and the optimizer's message, and the transform exits 65
(bad input: a new attempt cannot help).
"""

from __future__ import annotations

import argparse
import copy
import gc
import gzip
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXIT_PATCH_FAILED = 65
_WARM: dict[str, Any] = {"serving": False, "shared": None}
"""In a warm worker (``--serve``) the shared compilations outlive each job."""
_PROCESS_STARTED = time.time()
"""When this process imported the transform: its first job's start-up is counted from here."""
_JOBS_RUN = [0]
TIMINGS_PREFIX = "hpcaf-timings "
"""A job's log ends with one line of this prefix and a JSON object of its phases in
seconds (``bench/fit_campaign.py`` reads it for the per-step breakdown)."""
COMPILATION_CACHE_MIN_S = 0.0
"""Every compilation goes to the persistent cache, not only slow ones: a fit compiles a few
hundred small programs (indexing, Asimov data) besides the objective, together seconds."""
EXIT_NO_GPU = 66
MODIFIER_SETTINGS = {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}


_PARSED: dict[str, Any] = {}
"""Parsed inputs by content hash: a warm worker reads a pallet's patchset once."""


def load_json(path: str) -> Any:
    with open(path, "rb") as fh:
        raw = fh.read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest not in _PARSED:
        if len(_PARSED) > 8:
            _PARSED.clear()
        _PARSED[digest] = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    return _PARSED[digest]


def configure_backend(backend: str) -> str:
    """Select the pyhf backend; returns the device fits run on as JAX names its platform
    (``jax.devices()[0].platform``: ``cpu`` or ``gpu``); numpy runs on the ``cpu``."""
    import pyhf

    if backend == "jax":
        import jax
        import jax_contexts

        jax_contexts.reuse_ir_contexts()
        jax.config.update("jax_enable_x64", True)
        cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
        if cache:
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILATION_CACHE_MIN_S)
        pyhf.set_backend("jax")
        return str(jax.devices()[0].platform)
    pyhf.set_backend(backend)
    return "cpu"


def patch_metadata(patch: Any) -> dict[str, Any]:
    return {"name": patch.name, "values": list(patch.values)}


def fit_one(model: Any, data: Any, poi: float, test_stat: str) -> tuple[float, list[float]]:
    import pyhf

    cls_obs, cls_exp = pyhf.infer.hypotest(
        poi, data, model, test_stat=test_stat, return_expected_set=True
    )
    return float(cls_obs), [float(x) for x in cls_exp]


WORKSPACE_SECTIONS = ("/channels/", "/observations/", "/measurements/")
"""Where a patch may write and still be fitted on the shared path: everything a model
and its data are built from. A patch writing anywhere else is fitted the plain way."""


def run(job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    import pyhf

    args = job.get("transform_args", {})
    backend = args.get("backend", "numpy")
    poi = float(args.get("poi_value", 1.0))
    test_stat = args.get("test_stat", "qtilde")
    names = (job.get("job_parameters") or {}).get("patches") or []
    timings = Timings(first_in_process=_JOBS_RUN[0] == 0)
    _JOBS_RUN[0] += 1
    device = configure_backend(backend)
    timings.mark("backend_s")
    if args.get("require_gpu") and device == "cpu":
        print(f"pyhf_fit: a GPU was requested but {backend} sees only the CPU", file=sys.stderr)
        raise SystemExit(EXIT_NO_GPU)
    print(
        f"pyhf {pyhf.__version__}, backend {backend} on {device}, {len(names)} patches", flush=True
    )
    t0 = time.time()
    background = load_json(args.get("workspace", "BkgOnly.json"))
    raw = load_json(args.get("patchset", "patchset.json"))
    # pfit validated both documents before submission: read only the patches needed
    by_name = {p["metadata"]["name"]: p for p in raw["patches"]}
    missing = [name for name in names if name not in by_name]
    if missing:
        print(f"pyhf_fit: no patch named {', '.join(missing)} in the patchset", file=sys.stderr)
        raise SystemExit(EXIT_PATCH_FAILED)
    workspace = pyhf.Workspace(background, validate=False)
    patches = [pyhf.patchset.Patch(by_name[name]) for name in names]
    del raw, by_name
    print(f"inputs read in {time.time() - t0:.2f}s", flush=True)
    timings.mark("inputs_s")

    shared: Any = None
    if backend == "jax" and args.get("shared_compile", True):
        shared = _prepare_shared(background, workspace, patches)
    timings.mark("prepare_s")
    batched: dict[int, Any] = {}
    if shared is not None and args.get("fitter", "scipy") == "batched":
        batched = _batched_tests(shared, poi, test_stat)
    results: dict[str, Any] = {}
    for index, patch in enumerate(patches):
        start = time.time()
        entry: dict[str, Any] = {
            "metadata": patch_metadata(patch),
            "backend": backend,
            "device": device,
            "path": "plain",
        }
        try:
            slot = shared.slots[index] if shared is not None else None
            found = batched.get(index)
            if found is not None:
                test, share = found
                entry.update(
                    {"path": "shared", "fitter": "batched", "evaluations": test.evaluations}
                )
                cls_obs, cls_exp = test.cls_obs, test.cls_exp
                start -= share
            elif slot is not None:
                structure, leaves, data = slot
                entry["path"] = "shared"
                with shared.models.fitting(structure, leaves) as model:
                    cls_obs, cls_exp = fit_one(model, data, poi, test_stat)
            else:
                model, data = plain_model(workspace, patch)
                cls_obs, cls_exp = fit_one(model, data, poi, test_stat)
            entry.update({"CLs_obs": cls_obs, "CLs_exp": cls_exp, "status": "ok"})
        except Exception as exc:  # a failed fit is a result, not a crash
            entry.update({"status": "failed", "message": f"{type(exc).__name__}: {exc}"})
        entry["Fit-Time"] = time.time() - start
        timings.fitted(
            entry["Fit-Time"],
            index not in batched
            and entry["path"] == "shared"
            and _first_of_structure(shared, index),
        )
        results[patch.name] = entry
        status = entry["status"]
        shown = f"CLs_obs={entry['CLs_obs']:.6f}" if status == "ok" else entry["message"]
        print(
            f"{patch.name}: {status} {shown} ({entry['Fit-Time']:.2f}s, {entry['path']})",
            flush=True,
        )
    ok = all(e["status"] == "ok" for e in results.values())
    timings.report()
    return results, ok


class Timings:
    """Where a job's time went, printed as one line at its end (:data:`TIMINGS_PREFIX`).

    ``startup_s``: the process's own start-up before this job (its first job only; a warm
    worker's later jobs have none); ``backend_s``: importing and selecting the backend;
    ``inputs_s``: reading the pallet; ``prepare_s``: aligned models, their analysis and
    the JAX templates; ``first_fits_s``: the first fit of each new structure (which
    compiles); ``fits_s``: the other fits.
    """

    def __init__(self, *, first_in_process: bool) -> None:
        self.started = time.time()
        self.values: dict[str, float] = {
            "startup_s": self.started - _PROCESS_STARTED if first_in_process else 0.0,
            "first_fits_s": 0.0,
            "fits_s": 0.0,
            "patches": 0,
        }
        self._last = self.started

    def mark(self, name: str) -> None:
        now = time.time()
        self.values[name] = now - self._last
        self._last = now

    def fitted(self, seconds: float, compiled: bool) -> None:
        self.values["first_fits_s" if compiled else "fits_s"] += seconds
        self.values["patches"] += 1

    def report(self) -> None:
        shown = {k: round(v, 4) for k, v in self.values.items()}
        shown["started_at"] = round(self.started, 3)
        shown["ended_at"] = round(time.time(), 3)
        print(TIMINGS_PREFIX + json.dumps(shown), flush=True)


def _batched_tests(shared: SharedFits, poi: float, test_stat: str) -> dict[int, Any]:
    """The patches of each structure fitted together (:mod:`pyhf_batched`), with each one's
    share of the time; a patch whose fits did not converge is left out, to be fitted one
    at a time as pyhf does."""
    from pyhf_batched import hypotests

    groups: dict[Any, list[int]] = {}
    for index, slot in enumerate(shared.slots):
        if slot is not None:
            groups.setdefault(slot[0], []).append(index)
    found: dict[int, Any] = {}
    for structure, indices in groups.items():
        start = time.time()
        try:
            tests = hypotests(
                structure,
                [shared.slots[i][1] for i in indices],  # type: ignore[index]
                [shared.slots[i][2] for i in indices],  # type: ignore[index]
                poi,
                test_stat,
            )
        except Exception as exc:  # the one-at-a-time fits are the fallback, never a crash
            print(f"fitting together failed ({type(exc).__name__}: {exc})", flush=True)
            continue
        share = (time.time() - start) / len(indices)
        done = {i: (t, share) for i, t in zip(indices, tests, strict=True) if t is not None}
        found.update(done)
        print(
            f"{len(done)} of {len(indices)} patches fitted together in "
            f"{time.time() - start:.2f}s; the others one at a time",
            flush=True,
        )
    return found


def _first_of_structure(shared: Any, index: int) -> bool:
    """Whether patch ``index`` is the first of this job on its structure's newest
    compilation that had not been used before (its fit includes the compilation)."""
    if shared is None or shared.slots[index] is None:
        return False
    structure = shared.slots[index][0]
    if structure.key in shared.fitted:
        return False
    shared.fitted.add(structure.key)
    return True


def touches_only_channels(patch: Any) -> bool:
    return all(op["path"].startswith("/channels/") for op in patch.patch)


def plain_model(workspace: Any, patch: Any) -> tuple[Any, Any]:
    """The patched model and its data, as pyhf makes them (the slow truth).

    A patch applies to the whole workspace, as ``pyhf patchset apply`` and
    ``PatchSet.apply`` do, so that operations on ``/measurements`` (POI, bounds,
    fixed parameters) and ``/observations`` take effect. For a patch that writes
    only under ``/channels`` (every HEPData pallet's) that is exactly
    ``Workspace.model(patches=[patch])``, which is cheaper.
    """
    import pyhf

    if touches_only_channels(patch):
        model = workspace.model(patches=[patch], modifier_settings=MODIFIER_SETTINGS)
        return model, workspace.data(model)
    patched = pyhf.Workspace(patch.apply(workspace))
    model = patched.model(modifier_settings=MODIFIER_SETTINGS)
    return model, patched.data(model)


class SharedFits:
    """The shared compilation and, per patch, its slot on it (``None``: fit it plain)."""

    def __init__(self, models: Any, slots: list[tuple[Any, Any, Any] | None]) -> None:
        self.models = models
        self.slots = slots
        self.fitted: set[str] = models.fitted_structures


def _shareable(patch: Any) -> bool:
    return all(op["path"].startswith(WORKSPACE_SECTIONS) for op in patch.patch)


def _prepare_shared(
    background: dict[str, Any], workspace: Any, patches: list[Any]
) -> SharedFits | None:
    """Aligned models and one shared compilation; ``None`` fits every patch plain.

    The per-patch models are built with the numpy backend (five times faster to
    build than with JAX); only one template per key is built with JAX.
    """
    from pyhf_shared import SharedModels, StructureMismatch, align_specs

    t0 = time.time()
    chosen = [i for i, patch in enumerate(patches) if _shareable(patch)]
    if len(chosen) < len(patches):
        print(
            f"{len(patches) - len(chosen)} patch(es) write outside "
            f"{', '.join(WORKSPACE_SECTIONS)}: fitting those the plain way",
            flush=True,
        )
    # Each patch onto a fresh plain copy of the background, in place: jsonpatch's own
    # copy (``copy.deepcopy`` of a ``pyhf.Workspace``) costs about 0.07 s a patch, and
    # pyhf deep-copies a ``Workspace`` subclass again, slowly, for every model it builds.
    background_text = json.dumps(background)
    patched = {i: patches[i].apply(json.loads(background_text), in_place=True) for i in chosen}
    # Alignment pads a patch with the group's modifiers; a POI that the patch's own
    # model lacks would come in that way, and pyhf refuses such a model: so does hpcaf.
    without_poi = [i for i in chosen if not _declares_poi(patched[i])]
    if without_poi:
        print(
            f"{len(without_poi)} patch(es) do not declare the POI: fitting those the plain way",
            flush=True,
        )
        chosen = [i for i in chosen if i not in without_poi]
    if not chosen:
        return None
    specs = align_specs(background, [patched[i] for i in chosen])
    if specs is None:
        print("patches differ in more than normsys/histosys: fitting each on its own", flush=True)
        return None
    sm = _WARM["shared"] or SharedModels()
    _WARM["shared"] = sm if _WARM["serving"] else None
    try:
        with numpy_for_building():
            models = [build_model(spec) for spec in specs]
            data = [d for _, d in models]
            analysed = sm.analyse_all([m for m, _ in models])
            del models
        bound = sm.register(analysed, lambda index: build_template(specs[index]))
    except StructureMismatch as exc:
        print(f"shared compilation unavailable ({exc}): fitting each on its own", flush=True)
        return None
    sm.install()
    slots: list[tuple[Any, Any, Any] | None] = [None] * len(patches)
    for position, index in enumerate(chosen):
        structure, leaves = bound[position]
        slots[index] = (structure, leaves, data[position])
    print(
        f"{len(specs)} aligned models, {len(sm.structures)} structure(s), "
        f"prepared in {time.time() - t0:.2f}s",
        flush=True,
    )
    return SharedFits(sm, slots)


@contextmanager
def numpy_for_building() -> Iterator[None]:
    """pyhf's numpy backend inside the block, JAX after it, without re-making live models.

    On a change of backend pyhf re-makes the tensors of every model still alive
    (``tensorlib_changed``). The only live models here are a warm worker's JAX
    templates, which were made for JAX and are used again only under JAX; re-making
    them twice per job cost each later job of a worker about 0.35 s per kept template
    (measured on staus). The models built inside the block are made with numpy as they
    are built and do not outlive it.
    """
    import pyhf

    pyhf.events.disable("tensorlib_changed")
    try:
        pyhf.set_backend("numpy")
        yield
    finally:
        pyhf.set_backend("jax")
        pyhf.events.enable("tensorlib_changed")


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a job runs.

    A job makes millions of short-lived containers (the parsed pallet, pyhf's model
    construction, the optimizer's calls), and the collector answered with eight full
    collections in a staus job of 14 patches, each walking every object the worker holds: the
    imported libraries, the parsed pallet, the kept templates (``bench/worker_overheads.py``
    prints what they took). What a job allocates is freed by reference counting (the
    per-patch models included); what it leaves in reference cycles is a few thousand small
    objects (functions and classes that tracing makes), which a warm worker collects
    between jobs (``serving.py``) and a one-shot run leaves to its exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _declares_poi(spec: dict[str, Any]) -> bool:
    """Whether a patched workspace's own model has its measurement's POI."""
    poi = spec["measurements"][0]["config"]["poi"]
    return any(
        modifier["name"] == poi
        for channel in spec["channels"]
        for sample in channel["samples"]
        for modifier in sample["modifiers"]
    )


def build_template(spec: dict[str, Any]) -> Any:
    """The JAX model that a key's patches are fitted on (built under the JAX backend)."""
    return build_model(spec)[0]


def build_model(spec: dict[str, Any]) -> tuple[Any, Any]:
    """What ``Workspace(spec).model()`` and ``.data(model)`` make, without re-validating and
    re-indexing a workspace per patch.

    The measurement is the patched workspace's own (the first, as pyhf's
    ``get_measurement`` picks by default), so a patch's POI, bounds and fixed
    parameters take effect as in :func:`plain_model`.
    """
    import pyhf

    measurement = spec["measurements"][0]["config"]
    with json_spec_copies():
        model = pyhf.Model(
            {"channels": spec["channels"], "parameters": measurement["parameters"]},
            poi_name=measurement["poi"],
            modifier_settings=MODIFIER_SETTINGS,
            validate=False,
        )
    observed = {o["name"]: o["data"] for o in spec["observations"]}
    data = [x for c in model.config.channels for x in observed[c]] + model.config.auxdata
    return model, data


PYHF_PDF_COPY_READ = "0.7.6"
"""The pyhf whose ``pyhf/pdf.py`` was read: its ``copy`` serves only ``Model``'s copy of
its specification."""


class JsonCopy:
    """Stands in for the ``copy`` module inside ``pyhf.pdf`` while a model is built.

    ``pyhf.Model`` deep-copies its specification; ``copy.deepcopy`` of a large one costs
    0.4 s on 1Lbb (most of a model's build), while a specification is JSON, which the
    ``json`` module copies in a fraction of that. The copy is used only where it equals
    the original (a tuple, a NaN or a key that is not a string would not): otherwise
    ``copy.deepcopy``, as pyhf would.
    """

    @staticmethod
    def deepcopy(value: Any) -> Any:
        try:
            copied = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            copied = None
        if copied is None or copied != value:
            return copy.deepcopy(value)
        return copied


@contextmanager
def json_spec_copies() -> Iterator[None]:
    """:class:`JsonCopy` as ``pyhf.pdf``'s ``copy`` inside the block (pyhf 0.7.6 only)."""
    import pyhf
    import pyhf.pdf

    if pyhf.__version__ != PYHF_PDF_COPY_READ:
        yield
        return
    module: Any = pyhf.pdf
    saved = module.copy
    module.copy = JsonCopy
    try:
        yield
    finally:
        module.copy = saved


def serve() -> int:
    """A warm worker (``--serve``): jobs one after another in this process, through the
    serving loop the transforms share (``transforms/serving.py``); the shared
    compilations and parsed inputs outlive each job."""
    from serving import serve as serve_jobs

    _WARM["serving"] = True
    return serve_jobs(main, "pyhf_fit", ["--job", "job.json", "--output", "results.json"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fit pyhf patches (hpcaf transform)")
    parser.add_argument("--job", default="job.json")
    parser.add_argument("--output", default="results.json")
    parser.add_argument("--serve", action="store_true", help="run as a warm worker")
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    with open(args.job) as fh:
        job = json.load(fh)
    with collector_paused():
        results, ok = run(job)
    with open(args.output, "w") as fh:
        json.dump(results, fh, indent=1)
    return 0 if ok else EXIT_PATCH_FAILED


if __name__ == "__main__":
    sys.exit(main())
