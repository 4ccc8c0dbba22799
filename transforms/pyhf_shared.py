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
2. :func:`analyse` walks each model into a *key* and its floating-point array
   *leaves*.
3. The first model of a key becomes the JAX *template*; the compiled
   objective takes some of its leaves as arguments (the *varying* ones) and
   has the others compiled in. Each patch is fitted on the template with its
   varying leaves swapped in, so the objective is compiled once per key (and,
   with JAX's persistent cache, once per pilot).

The rule that keeps a reused template from carrying one patch's numbers into
another's fit: **a value is either passed in, or identical to the one
compiled in.** Everything but the floating-point arrays is part of the key by
value (:func:`_walk`); every floating-point array in which a model differs
from the template is passed in (:meth:`Structure.differing` checks each model
against the compiled-in values, every time), and a job that needs more leaves
passed in than a compilation takes gets a wider one, never the old one. The
one exception to the key, :data:`BUILD_ONLY_SOURCES`, names Python lists that
pyhf reads only while building a model (the arrays built from them are
leaves); it is pinned to the pyhf version it was read from.

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


PYHF_VERSION_READ = "0.7.6"
"""The pyhf whose source :data:`BUILD_ONLY_SOURCES` was read from."""

BUILD_ONLY_SOURCES = frozenset(
    {
        # Python copies of the per-bin staterror uncertainties; the constraint reads
        # them once into its ``_sigmas`` array (a leaf)
        ("constrained_by_normal", "sigmas"),
        # the raw up/nominal/down yields; the interpolator copies them into arrays (leaves)
        ("normsys_combined", "_normsys_histoset"),
        ("histosys_combined", "_histosys_histoset"),
    }
)
"""(class, attribute) of values pyhf reads only while building a model.

They differ from patch to patch, so keying on them would compile every patch
anew; nothing reads them during a fit, and the arrays built from them are
leaves (passed in). Any other pyhf version keys on them too (slower, never wrong).
"""


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


class StructureMismatch(Exception):
    """Models that were expected to share a structure do not."""


def _walk(obj: Any, leaves: list[tuple[Path, Any]], key: list[Any]) -> None:
    """Collect ``obj``'s array leaves, and every other value of it into ``key``.

    Floating-point arrays are leaves: they are passed to the compiled objective as
    arguments. Everything else (integer and boolean arrays, which index and mask,
    floats, lists of numbers, strings, slices, …) is written into the key *by
    value*, so that two models with one key differ only in their leaves. The key
    is the walk in order: each value, each attribute, index or dict key on the way
    down, and where every container opens and closes, which names each value's
    place as a path would, without repeating the path at every one of a model's
    twenty thousand nodes.
    """
    import jax

    _Walk(jax.Array, _build_only_sources(), leaves, key).walk(obj, [])


_SCALARS = (str, int, bool, type(None), np.integer, np.bool_, slice)
_PLAIN = frozenset({str, int, bool, type(None)})
"""Types a list of which is keyed in one entry: values with no array inside."""
_OPEN = "("
_CLOSE = (")",)
_SEEN = ("seen",)
"""Markers of the key: tuples, as every entry is, whose first items no value's are."""


class _Walk:
    """:func:`_walk`'s recursion, with what every node needs looked up once per model."""

    def __init__(
        self,
        jax_array: type,
        build_only: frozenset[tuple[str, str]],
        leaves: list[tuple[Path, Any]],
        key: list[Any],
    ) -> None:
        self.arrays: tuple[type, ...] = (np.ndarray, jax_array)
        self.build_only = build_only
        self.seen: set[int] = set()
        self.leaves = leaves
        self.key = key

    def walk(self, obj: Any, path: list[tuple[str, Any]]) -> None:
        """``obj`` at ``path`` (a stack of steps, copied only for a leaf)."""
        key = self.key
        if isinstance(obj, self.arrays):
            array: Any = obj
            dtype = array.dtype
            if dtype.kind in "fc":  # numbers: a leaf, passed in
                self.leaves.append((tuple(path), array))
                key.append(("leaf", tuple(array.shape), dtype.str))
            else:  # indices and masks: structure, compiled in, so keyed by value
                host = np.asarray(obj)
                digest = hashlib.sha256(host.tobytes()).hexdigest()
                key.append(("array", host.shape, host.dtype.str, digest))
            return
        if isinstance(obj, (float, np.floating)):
            key.append(("float", float(obj).hex()))
            return
        if isinstance(obj, _SCALARS):
            kind = type(obj)
            key.append((kind.__name__, obj if kind is str or kind is int else repr(obj)))
            return
        if id(obj) in self.seen:
            key.append(_SEEN)
            return
        self.seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            if obj and _numeric(obj):
                numbers = np.asarray(obj, dtype=np.float64)
                digest = hashlib.sha256(numbers.tobytes()).hexdigest()
                key.append(("numbers", numbers.shape, digest))
                return
            if obj and {type(item) for item in obj} <= _PLAIN:
                # masks and index lists (thousands of booleans in a model): by value at once;
                # the key's repr tells True from 1 and 1 from '1'
                key.append(("plain", type(obj).__name__, tuple(obj)))
                return
            key.append((_OPEN, type(obj).__name__, len(obj)))
            for i, value in enumerate(obj):
                path.append(("i", i))
                self.walk(value, path)
                path.pop()
        elif isinstance(obj, dict):
            key.append((_OPEN, "dict", len(obj)))
            for k in sorted(obj, key=repr):
                key.append(("k", repr(k)))
                path.append(("k", k))
                self.walk(obj[k], path)
                path.pop()
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("pyhf"):
            owner = type(obj).__name__
            key.append((_OPEN, type(obj).__module__, owner))
            for name, value in sorted(vars(obj).items()):
                if name == "spec" or (owner, name) in self.build_only:
                    continue
                key.append(("a", name))
                path.append(("a", name))
                self.walk(value, path)
                path.pop()
        elif callable(obj) and not hasattr(obj, "__dict__"):
            key.append(("callable", repr(obj)))  # a builtin or a ufunc: no values
            return
        else:
            # An object this walk cannot look inside may hold values that would then be
            # compiled into a template and carried to another patch: never share it.
            raise StructureMismatch(
                f"cannot see inside {type(obj).__module__}.{type(obj).__name__}"
            )
        key.append(_CLOSE)


def _build_only_sources() -> frozenset[tuple[str, str]]:
    import pyhf

    return BUILD_ONLY_SOURCES if pyhf.__version__ == PYHF_VERSION_READ else frozenset()


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
    _walk(model, leaves, key)
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


class Structure:
    """A template model, the values compiled into it, and which leaves are passed in.

    ``baseline`` holds the template's own floating-point leaves: a leaf not in
    ``varying`` is compiled in with that value, so a model may use this structure
    only if its leaf there is *equal* (:meth:`differing` checks it, every time).
    The ``varying`` leaves travel packed, one flat array per dtype, so the compiled
    objective takes a couple of arguments rather than hundreds. Hashed by its key
    (the model key, the template and the varying set) so the jitted functions can
    take it as a static argument: a new varying set is a new compilation.
    """

    def __init__(
        self,
        model_key: str,
        template: Any,
        baseline: list[tuple[Path, Any]],
        varying: tuple[int, ...],
        serial: int,
    ) -> None:
        self.model_key = model_key
        self.template = template
        self.baseline = baseline
        self.varying = varying
        self.serial = serial
        self.key = f"{model_key}:{serial}:{varying}"
        self.fitted_together: Any = None
        """The batched fits' compilation for this structure (:mod:`pyhf_batched`), kept on
        the object because another registry's structure may compare equal to this one."""
        self.dtypes: list[str] = []
        self.layout: list[tuple[Path, int, int, int, tuple[int, ...]]] = []
        """Per varying leaf: (path, which flat array, offset, size, shape)."""
        sizes: dict[str, int] = {}
        for index in varying:
            path, array = baseline[index]
            dtype = str(array.dtype)
            if dtype not in sizes:
                sizes[dtype] = 0
                self.dtypes.append(dtype)
            shape = tuple(array.shape)
            size = int(np.prod(shape, dtype=np.int64))
            self.layout.append((path, self.dtypes.index(dtype), sizes[dtype], size, shape))
            sizes[dtype] += size

    def differing(self, leaves: list[tuple[Path, Any]]) -> set[int]:
        """The leaves of a model (of this model key) that differ from the compiled-in ones."""
        found = set()
        for index, ((path, array), (path_t, own)) in enumerate(
            zip(leaves, self.baseline, strict=True)
        ):
            if path != path_t:
                raise StructureMismatch(f"leaf {path!r} where the template has {path_t!r}")
            if not np.array_equal(np.asarray(array), own):
                found.add(index)
        return found

    def widened(self, more: set[int], serial: int) -> Structure:
        """The same template with more leaves passed in (compiled anew)."""
        varying = tuple(sorted(set(self.varying) | more))
        return Structure(self.model_key, self.template, self.baseline, varying, serial)

    def pack(self, leaves: list[tuple[Path, Any]]) -> tuple[Any, ...]:
        """A model's varying leaves as the objective's arguments."""
        import jax.numpy as jnp

        parts: list[list[Any]] = [[] for _ in self.dtypes]
        for index, (_, which, _, _, _) in zip(self.varying, self.layout, strict=True):
            parts[which].append(np.asarray(leaves[index][1]).ravel())
        return tuple(
            jnp.asarray(np.concatenate(p)) for p, dtype in zip(parts, self.dtypes, strict=True)
        )

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Structure) and other.key == self.key

    @contextmanager
    def bound(self, packed: tuple[Any, ...]) -> Iterator[Any]:
        """The template with a model's varying leaves (packed by :meth:`pack`) in place,
        restored afterwards; inside the compiled objective they are its traced arguments."""
        paths = [entry[0] for entry in self.layout]
        saved = [_get(self.template, p) for p in paths]
        try:
            for path, which, offset, size, shape in self.layout:
                _set(self.template, path, packed[which][offset : offset + size].reshape(shape))
            yield self.template
        finally:
            for path, value in zip(paths, saved, strict=True):
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
        """The newest structure of each model key."""
        self.fitted_structures: set[str] = set()
        """Keys of the structures already fitted once (compiled) in this process."""
        self._made = 0

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
        """Group analysed models by key; per model, its structure and its packed leaves.

        A key's template is made once per worker by ``build_template(index)`` under the
        JAX backend and must have the same key. Any leaf in which one of the models
        differs from the template's compiled-in value is passed in; when a later job
        needs more leaves passed in than the compilation takes, the structure is
        widened (one more compilation), never reused as it is.
        """
        members: dict[str, list[int]] = {}
        for index, (key, _) in enumerate(analysed):
            members.setdefault(key, []).append(index)
        slots: dict[int, tuple[Structure, tuple[Any, ...]]] = {}
        for key, indices in members.items():
            structure = self.structures.get(key)
            if structure is None:  # a warm worker keeps templates and their compilations
                template = build_template(indices[0])
                template_key, template_leaves = analyse(template)
                if template_key != key:
                    raise StructureMismatch("the JAX template differs in structure from its models")
                baseline = [(path, np.array(leaf)) for path, leaf in template_leaves]
                structure = Structure(key, template, baseline, (), self._serial())
            needed: set[int] = set()
            for j in indices:
                needed |= structure.differing(analysed[j][1])
            if not needed <= set(structure.varying):
                structure = structure.widened(needed, self._serial())
            self.structures[key] = structure
            for j in indices:
                slots[j] = (structure, structure.pack(analysed[j][1]))
        return [slots[j] for j in range(len(analysed))]

    def _serial(self) -> int:
        self._made += 1
        return self._made

    @contextmanager
    def fitting(self, structure: Structure, leaves: tuple[Any, ...]) -> Iterator[Any]:
        """The template bound to one patch; pyhf fits of it use the shared compilation."""
        with structure.bound(leaves) as model:
            self._active = (model, structure, leaves)
            try:
                yield model
            finally:
                self._active = None
