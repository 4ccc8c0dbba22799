"""One JAX compilation for all patches of a pallet that share a model structure.

pyhf's JAX optimizer jit-compiles the objective with the model as a static
argument, so every patched model is traced and compiled anew (seconds per
patch) although the patches of a pallet differ only in numbers. Here:

1. :func:`align_specs` gives every patched workspace the same structure:
   samples a patch adds get positional names, and every (channel, sample)
   carries the union of the group's normsys/histosys modifiers, neutral where
   a patch lacks one (a normsys of 1/1 or a histosys equal to the nominal is
   an exact no-op; its constrained parameter stays at its auxiliary value and
   cancels in the profile-likelihood ratio).
2. :class:`SharedModels` walks each model, keys its structure (shapes, names,
   indices — not the floating-point values) and records which array leaves
   differ between models of a structure.
3. The template model of a structure is fitted for every patch with that
   patch's leaves swapped in: the compiled objective takes those leaves as
   arguments, so it is compiled once per structure (and, with JAX's
   persistent cache, once per pilot).

Runs inside the fit image: standard library, numpy, jax and pyhf only.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

Path = tuple[tuple[str, Any], ...]


SAFE_ON_ZERO_SAMPLE = {"normfactor", "lumi", "normsys", "histosys", "staterror"}
"""Modifier types that are exact no-ops on a sample whose yields are all zero."""


def align_specs(
    background: dict[str, Any], specs: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """Patched workspace specs with one common structure, or ``None`` when impossible.

    The specs are changed in place (``Patch.apply`` returns fresh copies).
    """
    known = {(ch["name"], s["name"]) for ch in background["channels"] for s in ch["samples"]}
    for spec in specs:
        for channel in spec["channels"]:
            added = 0
            for sample in channel["samples"]:
                if (channel["name"], sample["name"]) not in known:
                    sample["name"] = f"hpcaf_signal_{added}"
                    added += 1
    union: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
    for spec in specs:
        for channel in spec["channels"]:
            for sample in channel["samples"]:
                slot = union.setdefault((channel["name"], sample["name"]), {})
                for modifier in sample["modifiers"]:
                    slot[(modifier["name"], modifier["type"])] = modifier
    for spec in specs:
        for channel in spec["channels"]:
            present = {s["name"] for s in channel["samples"]}
            bins = len(channel["samples"][0]["data"])
            for (ch_name, s_name), modifiers in union.items():
                if ch_name != channel["name"] or s_name in present:
                    continue
                # a signal sample this patch does not have here: zero yields are a no-op
                if any(kind not in SAFE_ON_ZERO_SAMPLE for _, kind in modifiers):
                    return None
                channel["samples"].append({"name": s_name, "data": [0.0] * bins, "modifiers": []})
            for sample in channel["samples"]:
                have = {(m["name"], m["type"]) for m in sample["modifiers"]}
                for (name, kind), modifier in union.get(
                    (channel["name"], sample["name"]), {}
                ).items():
                    if (name, kind) in have:
                        continue
                    neutral = _neutral(kind, modifier, sample)
                    if neutral is None:
                        return None
                    sample["modifiers"].append(neutral)
                sample["modifiers"].sort(key=lambda m: (m["name"], m["type"]))
            channel["samples"].sort(key=lambda s: s["name"])
    return specs


def _neutral(kind: str, modifier: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any] | None:
    """A modifier of ``kind`` that changes nothing on ``sample`` (``None``: no such thing)."""
    name = modifier["name"]
    if kind == "normsys":
        return {"name": name, "type": kind, "data": {"hi": 1.0, "lo": 1.0}}
    if kind == "histosys":
        data = list(sample["data"])
        return {"name": name, "type": kind, "data": {"hi_data": data, "lo_data": list(data)}}
    if not any(sample["data"]):  # zero yields: scaling or adding zero uncertainty is a no-op
        if kind in ("normfactor", "lumi"):
            return {"name": name, "type": kind, "data": None}
        if kind == "staterror":
            return {"name": name, "type": kind, "data": [0.0] * len(sample["data"])}
    return None


def _walk(
    obj: Any, path: Path, seen: set[int], leaves: list[tuple[Path, Any]], key: list[Any]
) -> None:
    import jax

    if isinstance(obj, (np.ndarray, jax.Array)):
        leaves.append((path, obj))
        key.append((path, tuple(obj.shape), str(obj.dtype)))
        return
    if isinstance(obj, (float, np.floating)):
        key.append((path, "float"))
        return
    if isinstance(obj, (str, int, bool, type(None), np.integer, np.bool_)):
        key.append((path, obj))
        return
    if id(obj) in seen:
        key.append((path, "seen"))
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)) and obj and _numeric(obj):
        key.append((path, "numbers", np.shape(obj)))
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _walk(value, (*path, ("i", i)), seen, leaves, key)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            _walk(obj[k], (*path, ("k", k)), seen, leaves, key)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("pyhf"):
        for name, value in sorted(vars(obj).items()):
            if name != "spec":
                _walk(value, (*path, ("a", name)), seen, leaves, key)
    else:
        key.append((path, type(obj).__name__))


def _numeric(values: Sequence[Any]) -> bool:
    """A (nested) list of plain numbers: floats are not part of a structure."""
    first = values[0]
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if not isinstance(first, (float, np.floating)):
        return False
    try:
        return np.asarray(values, dtype=float).dtype == np.float64
    except (ValueError, TypeError):
        return False


def analyse(model: Any) -> tuple[str, list[tuple[Path, Any]]]:
    """(structure key, array leaves) of a pyhf model."""
    leaves: list[tuple[Path, Any]] = []
    key: list[Any] = []
    _walk(model, (), set(), leaves, key)
    return hashlib.sha256(repr(key).encode()).hexdigest(), leaves


def _get(obj: Any, path: Path) -> Any:
    for kind, k in path:
        obj = obj[k] if kind in ("i", "k") else getattr(obj, k)
    return obj


def _set(root: Any, path: Path, value: Any) -> None:
    parent = _get(root, path[:-1])
    kind, k = path[-1]
    if kind == "a":
        setattr(parent, k, value)
    else:
        parent[k] = value


class StructureMismatch(Exception):
    """Models that were expected to share a structure do not."""


class Structure:
    """A template model and the paths of the leaves that vary between its patches.

    Hashed by its key so the jitted functions can take it as a static argument.
    """

    def __init__(self, key: str, template: Any, paths: list[Path]) -> None:
        self.key = key
        self.template = template
        self.paths = paths

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Structure) and other.key == self.key

    @contextmanager
    def bound(self, leaves: tuple[Any, ...]) -> Iterator[Any]:
        """The template with ``leaves`` in place (restored afterwards)."""
        saved = [_get(self.template, p) for p in self.paths]
        try:
            for path, value in zip(self.paths, leaves, strict=True):
                _set(self.template, path, value)
            yield self.template
        finally:
            for path, value in zip(self.paths, saved, strict=True):
                _set(self.template, path, value)


class SharedModels:
    """Registers groups of models and routes pyhf's JAX objective through one compilation."""

    def __init__(self) -> None:
        import jax

        self._opt: Any = importlib.import_module("pyhf.optimize.opt_jax")
        self._original = (self._opt._jitted_objective_and_grad, self._opt._jitted_objective)
        self._active: tuple[Any, Structure, tuple[Any, ...]] | None = None
        statics = (4, 5, 6, 7, 8)
        self._value_and_grad = jax.jit(
            jax.value_and_grad(self._objective, argnums=0), static_argnums=statics
        )
        self._value = jax.jit(self._objective, static_argnums=statics)
        self.structures: dict[str, Structure] = {}

    def _objective(
        self,
        pars: Any,
        data: Any,
        fixed_values: Any,
        leaves: tuple[Any, ...],
        fixed_idx: Any,
        variable_idx: Any,
        do_stitch: Any,
        objective: Any,
        structure: Structure,
    ) -> Any:
        with structure.bound(leaves) as model:
            return self._opt._final_objective(
                pars, data, fixed_values, fixed_idx, variable_idx, do_stitch, objective, model
            )

    def install(self) -> None:
        """Route pyhf's jitted objective through the shared compilation while active."""
        original_vg, original_v = self._original
        self._opt._jitted_objective_and_grad = self._route(original_vg, self._value_and_grad)
        self._opt._jitted_objective = self._route(original_v, self._value)

    def _route(
        self, original: Callable[..., Any], shared: Callable[..., Any]
    ) -> Callable[..., Any]:
        """pyhf's signature in; the shared compilation for the active patch, else pyhf's own."""

        def call(
            pars: Any,
            data: Any,
            fixed_values: Any,
            fixed_idx: Any,
            variable_idx: Any,
            do_stitch: Any,
            objective: Any,
            pdf: Any,
        ) -> Any:
            active = self._active
            if active is None or active[0] is not pdf:
                return original(
                    pars, data, fixed_values, fixed_idx, variable_idx, do_stitch, objective, pdf
                )
            return shared(
                pars,
                data,
                fixed_values,
                active[2],
                fixed_idx,
                variable_idx,
                do_stitch,
                objective,
                active[1],
            )

        return call

    def uninstall(self) -> None:
        self._opt._jitted_objective_and_grad, self._opt._jitted_objective = self._original

    @staticmethod
    def analyse_all(models: list[Any]) -> list[tuple[str, list[tuple[Path, Any]]]]:
        """Structure keys and leaves of models built cheaply (e.g. with numpy)."""
        return [analyse(m) for m in models]

    def register(
        self,
        analysed: list[tuple[str, list[tuple[Path, Any]]]],
        build_template: Callable[[int], Any],
    ) -> list[tuple[Structure, tuple[Any, ...]]]:
        """Group analysed models by structure.

        Each structure's template is made by ``build_template(index)`` under the
        JAX backend and must have the same structure; returns, per model, its
        structure and its varying leaves as device arrays.
        """
        import jax.numpy as jnp

        members: dict[str, list[int]] = {}
        for index, (key, _) in enumerate(analysed):
            members.setdefault(key, []).append(index)
        slots: dict[int, tuple[Structure, tuple[Any, ...]]] = {}
        for key, indices in members.items():
            first_leaves = analysed[indices[0]][1]
            varying = [
                i
                for i, (_, array) in enumerate(first_leaves)
                if any(
                    not np.array_equal(np.asarray(array), np.asarray(analysed[j][1][i][1]))
                    for j in indices[1:]
                )
            ]
            paths = [first_leaves[i][0] for i in varying]
            full_key = hashlib.sha256(f"{key}{paths!r}".encode()).hexdigest()
            structure = self.structures.get(full_key)
            if structure is None:  # a warm worker reuses templates and their compilations
                template = build_template(indices[0])
                template_key, _ = analyse(template)
                if template_key != key:
                    raise StructureMismatch("the JAX template differs in structure from its models")
                structure = Structure(full_key, template, paths)
                self.structures[full_key] = structure
            for j in indices:
                leaves = tuple(jnp.asarray(analysed[j][1][i][1]) for i in varying)
                slots[j] = (structure, leaves)
        return [slots[j] for j in range(len(analysed))]

    @contextmanager
    def fitting(self, structure: Structure, leaves: tuple[Any, ...]) -> Iterator[Any]:
        """The template bound to one patch; pyhf fits of it use the shared compilation."""
        with structure.bound(leaves) as model:
            self._active = (model, structure, leaves)
            try:
                yield model
            finally:
                self._active = None
