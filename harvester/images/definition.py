"""Reading Apptainer definition files (the header and the sections hpcaf uses)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from harvester.errors import ImageError

KNOWN_SECTIONS = {
    "post",
    "environment",
    "runscript",
    "labels",
    "help",
    "files",
    "test",
    "setup",
    "startscript",
}


@dataclass
class Definition:
    """A parsed ``.def`` file."""

    header: dict[str, str]
    sections: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.header.get("bootstrap", "")

    @property
    def os_version(self) -> str:
        return self.header.get("osversion", "bookworm")

    @property
    def include(self) -> list[str]:
        return [p for p in re.split(r"[\s,]+", self.header.get("include", "")) if p]

    @property
    def labels(self) -> dict[str, str]:
        labels = {}
        for line in self.sections.get("labels", "").splitlines():
            parts = line.strip().split(None, 1)
            if parts and not parts[0].startswith("#"):
                labels[parts[0]] = parts[1] if len(parts) > 1 else ""
        return labels

    @property
    def environment(self) -> dict[str, str]:
        """``export K=V`` / ``K=V`` lines of %environment (what bubblewrap sets)."""
        env: dict[str, str] = {}
        for raw in self.sections.get("environment", "").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            line = line.removeprefix("export ").strip()
            if "=" not in line:
                continue
            key, value = line.split("=", 1)
            if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                words = shlex.split(value) if value else [""]
                env[key] = words[0] if words else ""
        return env


def parse_definition(text: str, *, source: str = "<definition>") -> Definition:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("%"):
            name = stripped[1:].split()[0].lower() if stripped[1:] else ""
            if name not in KNOWN_SECTIONS:
                raise ImageError(f"{source}:{number}: unknown section %{name}")
            current = name
            sections.setdefault(current, [])
            continue
        if current is None:
            if not stripped or stripped.startswith("#"):
                continue
            if ":" not in stripped:
                raise ImageError(f"{source}:{number}: expected 'Key: value' in the header")
            key, value = stripped.split(":", 1)
            header[key.strip().lower()] = value.strip()
        else:
            sections[current].append(raw)
    if "bootstrap" not in header:
        raise ImageError(f"{source}: the header has no 'Bootstrap:' line")
    return Definition(
        header=header, sections={k: "\n".join(v).strip("\n") for k, v in sections.items()}
    )


def read_definition(path: Path) -> Definition:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ImageError(f"cannot read definition file {path}: {exc}") from exc
    return parse_definition(text, source=str(path))
