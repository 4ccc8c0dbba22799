"""The funcX demonstration's two functions, run through ``hpcaf.Executor``.

The functions are written as the demonstration wrote them: the workspace is
prepared once (remotely), then one hypothesis test per signal patch. Run it
against a harvester that has the ``pyhf`` image::

    HPCAF_URL=... HPCAF_TOKEN=... HPCAF_PALLETS=/path/to/pallets \\
        python docs/examples/pyhf_functions.py [PALLET] [N_PATCHES]

``PALLET`` is a folder under ``$HPCAF_PALLETS`` with ``BkgOnly.json`` and
``patchset.json`` (or ``.json.gz``), default ``staus/Region-combined``;
``N_PATCHES`` fits only the first N. The workspace comes back to this process
as the demonstration's did, so reading it needs pyhf here too
(``pip install 'hpcaf[fit]'``).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def prepare_workspace(data, backend):  # type: ignore[no-untyped-def]
    import pyhf

    pyhf.set_backend(backend)
    return pyhf.Workspace(data)


def infer_hypotest(workspace, metadata, patches, backend):  # type: ignore[no-untyped-def]
    import time

    import pyhf

    pyhf.set_backend(backend)

    tick = time.time()
    model = workspace.model(
        patches=patches,
        modifier_settings={
            "normsys": {"interpcode": "code4"},
            "histosys": {"interpcode": "code4p"},
        },
    )
    data = workspace.data(model)
    test_poi = 1.0
    return {
        "metadata": metadata,
        "CLs_obs": float(pyhf.infer.hypotest(test_poi, data, model, test_stat="qtilde")),
        "Fit-Time": time.time() - tick,
    }


def read_json(path: Path) -> Any:
    """A pallet file, gzipped or not."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            raw = candidate.read_bytes()
            return json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    raise FileNotFoundError(path)


def run(
    pallet: str = "staus/Region-combined",
    n_patches: int | None = None,
    backend: str = "numpy",
    site: str | None = None,
) -> list[dict[str, Any]]:
    """Fit the pallet's patches; the results in patch order."""
    folder = Path(os.environ.get("HPCAF_PALLETS", "pallets")) / pallet
    bkg_only = read_json(folder / "BkgOnly.json")
    patches = read_json(folder / "patchset.json")["patches"][:n_patches]
    import hpcaf  # here, so that Parsl's workers can import the functions without it

    started = time.time()
    with hpcaf.Executor(site=site, containerImage="pyhf") as ex:
        workspace = ex.submit(prepare_workspace, bkg_only, backend).result()
        print(f"workspace prepared in {time.time() - started:.1f}s", flush=True)
        futures = {
            ex.submit(infer_hypotest, workspace, p["metadata"], [p["patch"]], backend): i
            for i, p in enumerate(patches)
        }
        results: list[dict[str, Any]] = [{} for _ in patches]
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    print(f"{len(results)} patches fitted in {time.time() - started:.1f}s\n")
    print(f"{'patch':<30} {'CLs_obs':>10} {'fit (s)':>8}")
    for result in results:
        name = result["metadata"]["name"]
        print(f"{name:<30} {result['CLs_obs']:>10.6f} {result['Fit-Time']:>8.2f}")
    return results


if __name__ == "__main__":
    try:
        import pyhf  # noqa: F401 - the workspace comes back here, as in the demonstration
    except ImportError:
        sys.exit("this example reads the workspace back: it needs pyhf (pip install 'hpcaf[fit]')")
    run(
        sys.argv[1] if len(sys.argv) > 1 else "staus/Region-combined",
        int(sys.argv[2]) if len(sys.argv) > 2 else None,
        site=os.environ.get("HPCAF_SITE"),
    )
