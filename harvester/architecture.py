"""Parsing of ``--architecture`` into a typed resource request.

This module understands the CPU forms and whether a GPU is asked for
(``nvidia-gpu``, PanDA's ``#&nvidia…`` shorthand and the ``gpu_spec`` JSON
form); the detailed GPU attributes are parsed by the GPU brokerage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from harvester.errors import InvalidRequest


@dataclass(frozen=True)
class ArchitectureRequest:
    """What a job needs from the node beyond cores and memory."""

    raw: str | None
    gpu: bool
    vendor: str | None = None

    @property
    def label(self) -> str:
        return f"{self.vendor or 'any'} GPU" if self.gpu else "CPU"


_SIMPLE = re.compile(r"^(?P<vendor>nvidia|amd|intel)-gpu$")
_CPU_ONLY = re.compile(r"^[A-Za-z0-9_.\-@]*(#[A-Za-z0-9_.\-]*)?$")


def parse_architecture(value: str | None) -> ArchitectureRequest:
    """Parse the submission's architecture string; a malformed one is a 400."""
    if value is None or not value.strip():
        return ArchitectureRequest(raw=None, gpu=False)
    text = value.strip()
    simple = _SIMPLE.match(text)
    if simple:
        return ArchitectureRequest(raw=text, gpu=True, vendor=simple.group("vendor"))
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"invalid architecture JSON: {exc}") from exc
        spec = document.get("gpu_spec") if isinstance(document, dict) else None
        if not isinstance(spec, dict):
            raise InvalidRequest("architecture JSON needs a 'gpu_spec' object")
        vendor = spec.get("vendor")
        return ArchitectureRequest(raw=text, gpu=True, vendor=str(vendor) if vendor else None)
    if "&" in text:
        _, gpu_part = text.split("&", 1)
        vendor = gpu_part.split(":", 1)[0].strip().lower()
        if vendor not in {"nvidia", "amd", "intel"}:
            raise InvalidRequest(
                f"invalid architecture {value!r}: GPU vendor {vendor!r} is not one of "
                "nvidia, amd, intel"
            )
        return ArchitectureRequest(raw=text, gpu=True, vendor=vendor)
    if _CPU_ONLY.match(text):
        return ArchitectureRequest(raw=text, gpu=False)
    raise InvalidRequest(
        f"invalid architecture {value!r}: expected 'nvidia-gpu', '[sw@base]#[cpu]&gpu' "
        "(e.g. '#&nvidia') or '{\"gpu_spec\": {...}}'"
    )
