"""One helper runs every external command: with a timeout, raising an error that says it all."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harvester.errors import ProviderError


class CommandError(ProviderError):
    """An external command failed, timed out, or could not be started."""

    def __init__(
        self,
        command: Sequence[str],
        exit_code: int | None,
        stdout: str,
        stderr: str,
        reason: str,
    ) -> None:
        self.command = list(command)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr.strip() or stdout.strip())[-2000:]
        super().__init__(f"{' '.join(self.command)}: {reason}" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class CommandResult:
    stdout: str
    stderr: str


def run_command(
    command: Sequence[str],
    *,
    timeout_s: float,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run ``command``; raise :class:`CommandError` on a non-zero exit or a timeout."""
    try:
        proc = subprocess.run(
            list(command),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        errout = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise CommandError(command, None, out, errout, f"timed out after {timeout_s:.0f}s") from exc
    except OSError as exc:
        raise CommandError(command, None, "", str(exc), "could not be started") from exc
    if proc.returncode != 0:
        raise CommandError(
            command, proc.returncode, proc.stdout, proc.stderr, f"exit code {proc.returncode}"
        )
    return CommandResult(stdout=proc.stdout, stderr=proc.stderr)
