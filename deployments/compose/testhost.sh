#!/usr/bin/env bash
# The compose `test` profile's hosts (the Dockerfile's `testhost` stage, as root):
#   airavata-testhost keys    one-shot: the client key pair of SSH_USER in /keys (made once)
#   airavata-testhost sshd    a bare-metal host: sshd on port 22, key auth for SSH_USER only
#   airavata-testhost slurm   a single-node SLURM 22.05 (scripts/slurm_cluster.sh) and its
#                             login node: the same sshd; sbatch finds /etc/slurm/slurm.conf
# The private key /keys/client_ed25519 is a test secret: it goes into OpenBao
# (`airavata credential create ... --from-file private_key=...`), never into a block.
# Host keys stay in /var/lib/testhost (a volume per host), so a pinned host key keeps matching.
set -euo pipefail
user=${SSH_USER:-airavata-ci}
keys=${KEYS_DIR:-/keys}
state=${STATE_DIR:-/var/lib/testhost}
port=${SSHD_PORT:-22}

sshd_foreground() {
  id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
  usermod -p '*' "$user"  # a user made by useradd is locked until its password field is not '!'
  mkdir -p /run/sshd "$state"
  [ -f "$state/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$state/ssh_host_ed25519_key"
  [ -f "$keys/client_ed25519.pub" ] || { echo "no $keys/client_ed25519.pub: run the testhost-keys service" >&2; exit 1; }
  cat >"$state/sshd_config" <<CONF
Port $port
ListenAddress 0.0.0.0
HostKey $state/ssh_host_ed25519_key
AuthorizedKeysFile $keys/client_ed25519.pub
AllowUsers $user
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
UsePAM no
StrictModes no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
LogLevel INFO
CONF
  echo "sshd for $user on port $port; host key: $(cut -d' ' -f1,2 "$state/ssh_host_ed25519_key.pub")"
  exec /usr/sbin/sshd -D -e -f "$state/sshd_config"
}

case "${1:-}" in
keys)
  mkdir -p "$keys"
  [ -f "$keys/client_ed25519" ] \
    || ssh-keygen -q -t ed25519 -N '' -C "$user@airavata-compose" -f "$keys/client_ed25519"
  chmod 600 "$keys/client_ed25519"
  chmod 644 "$keys/client_ed25519.pub"
  echo "client key of $user: $keys/client_ed25519" ;;
sshd)
  sshd_foreground ;;
slurm)
  export SLURM_DIR=$state/slurm
  bash /usr/local/lib/airavata/slurm_cluster.sh start
  mkdir -p /etc/slurm
  ln -sf "$SLURM_DIR/etc/slurm.conf" /etc/slurm/slurm.conf  # commands over SSH find it
  sshd_foreground ;;
*)
  echo "usage: airavata-testhost keys|sshd|slurm" >&2
  exit 2 ;;
esac
