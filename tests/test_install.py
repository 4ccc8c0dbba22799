"""The README's install on a plain Debian 12, whose python3 is Debian's own: no pip, and
marked externally managed (PEP 668).

The throw-away root is a copy of the ``base`` image, which is exactly that: Debian 12
made by debootstrap with Debian's python3 and nothing else. The project's tracked files
are copied in and ``scripts/install-deps.sh`` runs there as root, in a chroot with its own
mount and process namespaces, fetching from Debian's mirror and PyPI as a new machine
would. Nothing of this machine's Python or pip configuration is visible inside, except
how it trusts the network: a TLS bundle named by ``PIP_CERT`` (or ``REQUESTS_CA_BUNDLE``,
``SSL_CERT_FILE``) is copied in and named there too, as any machine on a network that
re-signs TLS carries its CA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.e2e

PLAIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
NETWORK_TRUST = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def _network_trust(root: Path) -> dict[str, str]:
    """The host's TLS trust settings, with the bundles they name copied into ``root``."""
    carried = {}
    for name in NETWORK_TRUST:
        bundle = os.environ.get(name)
        if bundle and Path(bundle).is_file():
            inside = root / "etc" / "hpcaf-network-ca" / f"{name}.pem"
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(bundle, inside)
            carried[name] = "/" + str(inside.relative_to(root))
    return carried


def _chroot(root: Path, script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``script`` (bash) as root inside ``root``, with /proc, /dev and the host's resolver."""
    inner = (
        'set -e; mount -t proc proc "$1/proc"; mount --rbind /dev "$1/dev"; '
        'exec chroot "$1" /usr/bin/env -i '
        + " ".join(f"{k}={v}" for k, v in {**PLAIN_ENV, **_network_trust(root)}.items())
        + ' /bin/bash -c "$2"'
    )
    return subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
         "/bin/sh", "-c", inner, "sh", str(root), script],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def debian_root(image_cache: Path, tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, mounts), as the README's install does")
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(image_cache / "base" / "rootfs"), str(root)], check=True)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    src = root / "src"
    for name in filter(None, (t.decode() for t in tracked)):
        source = REPO / name
        if source.is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, src / name)
    return root


def test_the_install_steps_on_a_plain_debian_12(debian_root: Path) -> None:
    """Debian's python3 has no pip and refuses system-wide installs; install-deps.sh makes
    .venv (installing python3-venv) and installs hpcaf there: the user clients alone, which
    all run. pfit without the ``fit`` extra and harvester without ``server`` name the extra
    instead of a traceback."""
    before = _chroot(
        debian_root,
        "python3 -m pip --version; test -f /usr/lib/python3*/EXTERNALLY-MANAGED && echo managed",
        60,
    )
    assert "No module named pip" in before.stderr and "managed" in before.stdout, before

    installed = _chroot(debian_root, "cd /src && scripts/install-deps.sh", 900)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    assert "python3-venv" in installed.stdout, "Debian's python3 needed python3-venv"

    checks = _chroot(
        debian_root,
        "cd /src && readlink -f .venv/bin/python && "
        "for cli in pilot pcontainer pbook pfit phpo; do "
        '  .venv/bin/$cli --help >/dev/null || { echo "$cli failed"; exit 1; }; done; '
        '.venv/bin/python -c "import hpcaf; print(hpcaf.Client.__name__, '
        'hpcaf.Executor.__mro__[1].__module__)"; '
        '.venv/bin/harvester serve; echo "harvester exit $?"; '
        "mkdir -p /tmp/p && echo '{}' > /tmp/p/BkgOnly.json && echo '{}' > /tmp/p/patchset.json; "
        '.venv/bin/pfit --pallet /tmp/p; echo "pfit exit $?"',
        120,
    )
    assert checks.stdout.splitlines()[0].startswith("/usr/bin/python3"), checks
    assert "failed" not in checks.stdout, checks
    # the base installation is the user clients alone: the Python API imports, and the
    # service and the fits each name the extra that brings them
    assert "Client concurrent.futures._base" in checks.stdout, checks
    assert "harvester exit 2" in checks.stdout, checks
    assert "pip install 'hpcaf[server]'" in checks.stderr, checks.stderr
    assert "pfit exit 2" in checks.stdout, checks
    assert "pip install 'hpcaf[fit]'" in checks.stderr, checks.stderr
    assert "Traceback" not in checks.stderr, checks.stderr
