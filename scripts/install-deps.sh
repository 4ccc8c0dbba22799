#!/usr/bin/env bash
# Install what hpcaf needs on a Debian 12 machine, as root (or a user with sudo):
#
#   * Debian packages, when missing: bubblewrap and debootstrap (containers and their
#     images), python3 and python3-venv; for the tests also Chromium (the dashboard)
#     and docker-registry, skopeo and umoci (docker:// images);
#   * the project virtual environment .venv (made with the machine's python3, which on
#     Debian is Debian's own: no pip, externally managed), holding hpcaf in editable
#     mode with the extras named as arguments (e.g. "test", "fit").
#
# Every make target, script and test then runs .venv/bin/python. HPCAF_VENV names
# another environment; HPCAF_EXTRA_APT adds Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HPCAF_VENV:-.venv}"

apt_install() {
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || {
      echo "install-deps: installing Debian packages ($*) needs root: run as root, or with sudo" >&2
      exit 1
    }
    SUDO=sudo
  fi
  echo "installing Debian packages: $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v python3 >/dev/null || need_apt+=(python3)
if [[ " $* " == *" test "* ]]; then  # the dashboard tests drive a headless Chromium
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
  # docker:// images: a loopback registry, and the tools that push and pull its images
  command -v docker-registry >/dev/null || need_apt+=(docker-registry)
  command -v skopeo >/dev/null || need_apt+=(skopeo)
  command -v umoci >/dev/null || need_apt+=(umoci)
fi
for pkg in "${HPCAF_EXTRA_APT[@]:-}"; do
  [ -n "$pkg" ] && ! dpkg -s "$pkg" >/dev/null 2>&1 && need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
  # Debian's python3 makes a venv only with python3-venv (ensurepip) installed
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv
  fi
  echo "creating the virtual environment $venv ($(python3 --version))"
  rm -rf "$venv"
  python3 -m venv "$venv"
fi

extras=""
[ $# -gt 0 ] && extras="[$(IFS=,; echo "$*")]"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".${extras}"
