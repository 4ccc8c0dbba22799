#!/usr/bin/env bash
# Install what hpcaf needs on a Debian 12 machine: Debian packages (when missing) and the
# Python package with the extras named as arguments (e.g. "test", "fit").
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [[ " $* " == *" test "* ]]; then  # the dashboard tests drive a headless Chromium
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
fi
for pkg in "${HPCAF_EXTRA_APT[@]:-}"; do
  [ -n "$pkg" ] && ! dpkg -s "$pkg" >/dev/null 2>&1 && need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

extras=""
[ $# -gt 0 ] && extras="[$(IFS=,; echo "$*")]"
python3 -m pip install -q --disable-pip-version-check -e ".${extras}"
