# Sourced by the provisioning scripts.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# The interface that holds an address in $1 (a /24 like 198.18.1.0/24).
iface_in() { ip -o -4 addr show to "$1" | awk '{print $2; exit}'; }

# A systemd oneshot that runs $2 (a script) at boot, so the lab survives reboots.
boot_script() {
  local name=$1 script=$2
  install -m 0755 "$script" "/usr/local/sbin/$name"
  cat > "/etc/systemd/system/$name.service" <<UNIT
[Unit]
Description=Keystone lab: $name
After=network-online.target
Wants=network-online.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/$name
[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now "$name.service"
}
