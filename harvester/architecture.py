"""Parsing of ``--architecture`` into one typed resource request.

Accepted forms (as PanDA's):

- ``nvidia-gpu`` (also ``amd-gpu``, ``intel-gpu``): any GPU of that vendor;
- the shorthand ``[sw@base]#[cpu_spec]&gpu_spec``, where ``gpu_spec`` is
  ``vendor[:key op value]…`` with keys ``model`` (``=``/``!=`` a regular
  expression), ``cuda`` (``>=`` a version), ``vram`` (``>=`` MiB, or with a
  ``G``/``GB``/``GiB``/``M`` unit), ``uarch`` (``=`` a microarchitecture),
  ``driver`` (``>=`` a version), e.g. ``#&nvidia:cuda>=12.0:vram>=40960:model!=.*P100.*``;
- JSON ``{"gpu_spec": {"vendor", "model", "version", "vram", "microarchitecture",
  "driver_version"}}``.

Anything else is a 400 with a message that says what was expected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from harvester.errors import InvalidRequest

VENDORS = ("nvidia", "amd", "intel")
_SIMPLE = re.compile(r"^(?P<vendor>[a-z]+)-gpu$")
_CPU_ONLY = re.compile(r"^[A-Za-z0-9_.\-]*(@[A-Za-z0-9_.\-]*)?(#[A-Za-z0-9_.\-]*)?$")
_CONDITION = re.compile(r"^(?P<key>[a-z_]+)\s*(?P<op>>=|!=|=)\s*(?P<value>.+)$")
_VRAM = re.compile(r"^(?P<number>\d+(\.\d+)?)\s*(?P<unit>|m|mb|mib|g|gb|gib)$", re.IGNORECASE)


@dataclass(frozen=True)
class GpuRequest:
    """What a job needs from a GPU; ``None`` fields ask for nothing."""

    vendor: str
    model: str | None = None
    """Regular expression the GPU model must match (or must not, with ``model_negated``)."""
    model_negated: bool = False
    min_cuda: tuple[int, ...] | None = None
    min_vram_mb: int | None = None
    microarchitecture: str | None = None
    min_driver: tuple[int, ...] | None = None

    def to_document(self) -> dict[str, Any]:
        """The request as a task row keeps it (``tasks.gpu_request``), versions as lists."""
        return {
            "vendor": self.vendor,
            "model": self.model,
            "model_negated": self.model_negated,
            "min_cuda": list(self.min_cuda) if self.min_cuda is not None else None,
            "min_vram_mb": self.min_vram_mb,
            "microarchitecture": self.microarchitecture,
            "min_driver": list(self.min_driver) if self.min_driver is not None else None,
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> GpuRequest:
        """The request :meth:`to_document` stored: parsed at submission, nothing to check."""
        min_cuda, min_driver = document["min_cuda"], document["min_driver"]
        return cls(
            vendor=document["vendor"],
            model=document["model"],
            model_negated=document["model_negated"],
            min_cuda=tuple(min_cuda) if min_cuda is not None else None,
            min_vram_mb=document["min_vram_mb"],
            microarchitecture=document["microarchitecture"],
            min_driver=tuple(min_driver) if min_driver is not None else None,
        )

    def model_ok(self, model: str) -> bool:
        if self.model is None:
            return True
        found = re.fullmatch(self.model, model, flags=re.IGNORECASE) is not None
        return not found if self.model_negated else found


@dataclass(frozen=True)
class ArchitectureRequest:
    """A job's needs beyond cores and memory."""

    raw: str | None
    gpu: GpuRequest | None = None

    @property
    def needs_gpu(self) -> bool:
        return self.gpu is not None

    @property
    def vendor(self) -> str | None:
        return self.gpu.vendor if self.gpu else None


def parse_version(text: str, what: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+)*", text.strip()):
        raise InvalidRequest(f"invalid {what} version {text!r}: expected numbers like 12.0")
    return tuple(int(p) for p in text.strip().split("."))


def parse_vram(text: str) -> int:
    """MiB from ``40960``, ``40960M``, ``40G``, ``40GB``, ``40GiB``."""
    match = _VRAM.match(str(text).strip())
    if not match:
        raise InvalidRequest(
            f"invalid vram {text!r}: give MiB (40960) or a unit (40G, 40GB, 40960M)"
        )
    number = float(match.group("number"))
    unit = match.group("unit").lower()
    mib = number * 1024 if unit.startswith("g") else number
    if mib < 1 or mib > 16 * 1024 * 1024:
        raise InvalidRequest(f"invalid vram {text!r}: {mib:.0f} MiB makes no sense")
    return int(mib)


def _vendor(name: str, value: str) -> str:
    vendor = name.strip().lower()
    if vendor not in VENDORS:
        raise InvalidRequest(
            f"invalid architecture {value!r}: GPU vendor {vendor!r} is not one of "
            f"{', '.join(VENDORS)}"
        )
    return vendor


def _regex(pattern: str, value: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidRequest(f"invalid architecture {value!r}: bad model pattern ({exc})") from exc
    return pattern


def _shorthand(gpu_part: str, value: str) -> GpuRequest:
    parts = gpu_part.split(":")
    vendor = _vendor(parts[0], value)
    fields: dict[str, Any] = {"vendor": vendor}
    for condition in parts[1:]:
        match = _CONDITION.match(condition.strip())
        if not match:
            raise InvalidRequest(
                f"invalid architecture {value!r}: {condition!r} is not 'key>=value', "
                "'key=value' or 'key!=value'"
            )
        key, op, val = match.group("key"), match.group("op"), match.group("value").strip()
        if key == "model" and op in ("=", "!="):
            fields["model"] = _regex(val, value)
            fields["model_negated"] = op == "!="
        elif key == "cuda" and op == ">=":
            fields["min_cuda"] = parse_version(val, "cuda")
        elif key == "vram" and op == ">=":
            fields["min_vram_mb"] = parse_vram(val)
        elif key in ("uarch", "microarchitecture") and op == "=":
            fields["microarchitecture"] = val
        elif key in ("driver", "driver_version") and op == ">=":
            fields["min_driver"] = parse_version(val, "driver")
        else:
            raise InvalidRequest(
                f"invalid architecture {value!r}: unsupported condition {condition!r} "
                "(model=/!=, cuda>=, vram>=, uarch=, driver>=)"
            )
    return GpuRequest(**fields)


def _json_form(text: str, value: str) -> GpuRequest:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid architecture JSON: {exc}") from exc
    spec = document.get("gpu_spec") if isinstance(document, dict) else None
    if not isinstance(spec, dict):
        raise InvalidRequest("architecture JSON needs a 'gpu_spec' object")
    unknown = set(spec) - {
        "vendor",
        "model",
        "version",
        "vram",
        "microarchitecture",
        "driver_version",
    }
    if unknown:
        raise InvalidRequest(f"unknown gpu_spec keys: {', '.join(sorted(unknown))}")
    vendor = _vendor(str(spec.get("vendor", "nvidia")), value)
    return GpuRequest(
        vendor=vendor,
        model=_regex(str(spec["model"]), value) if spec.get("model") else None,
        min_cuda=parse_version(str(spec["version"]), "cuda") if spec.get("version") else None,
        min_vram_mb=parse_vram(str(spec["vram"])) if spec.get("vram") is not None else None,
        microarchitecture=str(spec["microarchitecture"]) if spec.get("microarchitecture") else None,
        min_driver=parse_version(str(spec["driver_version"]), "driver")
        if spec.get("driver_version")
        else None,
    )


def parse_architecture(value: str | None) -> ArchitectureRequest:
    """Parse the submission's architecture string; a malformed one is a 400."""
    if value is None or not value.strip():
        return ArchitectureRequest(raw=None)
    text = value.strip()
    simple = _SIMPLE.match(text)
    if simple:
        return ArchitectureRequest(
            raw=text, gpu=GpuRequest(vendor=_vendor(simple["vendor"], value))
        )
    if text.startswith("{"):
        return ArchitectureRequest(raw=text, gpu=_json_form(text, value))
    if "&" in text:
        cpu_part, gpu_part = text.split("&", 1)
        if not _CPU_ONLY.match(cpu_part):
            raise InvalidRequest(f"invalid architecture {value!r}: bad '[sw@base]#[cpu]' part")
        return ArchitectureRequest(raw=text, gpu=_shorthand(gpu_part, value))
    if _CPU_ONLY.match(text):
        return ArchitectureRequest(raw=text)
    raise InvalidRequest(
        f"invalid architecture {value!r}: expected 'nvidia-gpu', '[sw@base]#[cpu]&gpu_spec' "
        "(e.g. '#&nvidia:vram>=40960') or '{\"gpu_spec\": {...}}'"
    )
