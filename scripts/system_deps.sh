#!/usr/bin/env bash
# The system packages the real services need (SLURM, munge, sshd) and the browser the UI test
# drives (chromium): installed when missing.
# Debian/Ubuntu; as root it runs apt-get, otherwise it prints the command to run.
set -euo pipefail
need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v slurmrestd >/dev/null || need+=(slurmrestd)
[ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/auth_jwt.so ] || [ -e /usr/lib/aarch64-linux-gnu/slurm-wlm/auth_jwt.so ] \
  || need+=(slurm-wlm-jwt-plugin)
command -v munged >/dev/null || need+=(munge)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v curl >/dev/null || need+=(curl)
[ -x /usr/bin/chromium ] || need+=(chromium)  # tests/test_browser.py (Playwright)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing system packages; run: sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
    exit 1
  fi
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
# Docker Compose v2 validates docker-compose.yml in tests/test_compose.py (no engine needed).
bash "$(dirname "$0")/install_compose.sh"
