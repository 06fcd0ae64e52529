#!/usr/bin/env bash
# A second sshd on loopback: a bare-metal host / SLURM login node for tests and `make run`.
#   scripts/sshd_server.sh start|stop|status
# SSHD_DIR (default $AIRAVATA_HOME/sshd) holds its config, host key and pid file, plus a client
# key pair for SSH_USER (default airavata-ci, created when missing; needs root). Key auth only.
# The client's private key is a test secret: put it into OpenBao (`airavata credential create
# --from-file private_key=$SSHD_DIR/client_ed25519`), never into a block or the database.
set -euo pipefail
home=${AIRAVATA_HOME:-$HOME/.airavata}
dir=${SSHD_DIR:-$home/sshd}
port=${SSHD_PORT:-2222}
user=${SSH_USER:-airavata-ci}
pidfile="$dir/sshd.pid"

alive() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  command -v /usr/sbin/sshd >/dev/null || { echo "sshd not found: apt-get install openssh-server" >&2; exit 1; }
  if alive; then echo "sshd already up on 127.0.0.1:$port"; return 0; fi
  mkdir -p "$dir" /run/sshd
  if ! id "$user" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "user $user is missing and only root can create it" >&2; exit 1; }
    useradd -m -s /bin/bash "$user"
  fi
  # A user made by useradd is "locked" until it has a password field other than '!'.
  [ "$(id -u)" = 0 ] && usermod -p '*' "$user"
  [ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_ed25519_key"
  [ -f "$dir/client_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "$user@airavata-test" -f "$dir/client_ed25519"
  mkdir -p "$dir/authorized_keys"
  cp "$dir/client_ed25519.pub" "$dir/authorized_keys/$user"
  chmod 755 "$dir" "$dir/authorized_keys"; chmod 644 "$dir/authorized_keys/$user"
  cat >"$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $pidfile
AuthorizedKeysFile $dir/authorized_keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
UsePAM no
StrictModes no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
LogLevel ERROR
CONF
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  for _ in $(seq 50); do alive && break; sleep 0.1; done
  alive || { echo "sshd did not start; see $dir/sshd.log" >&2; exit 1; }
  echo "sshd up on 127.0.0.1:$port for user $user; host key: $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")"
}

case "${1:-start}" in
start) start ;;
stop) if alive; then kill "$(cat "$pidfile")"; fi; rm -f "$pidfile" ;;
status) if alive; then echo "up: 127.0.0.1:$port"; else echo "down"; exit 1; fi ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
