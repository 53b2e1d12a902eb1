#!/usr/bin/env bash
# Debian packages the tests and the demo talk to for real: Prometheus (with promtool),
# Alertmanager (with amtool) and Chromium for the web console's browser tests.
# Idempotent: does nothing when every tool is already there.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || need+=(chromium chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages ${need[*]}: run this script as root" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
