#!/usr/bin/env bash
# Gateway: builds Keystone from /keystone, configures forwarding and runs keystone-agent.
source /vagrant/provision/common.sh

apt-get update -q
apt-get install -y -q --no-install-recommends build-essential ca-certificates curl git \
  iproute2 ethtool procps pkg-config

if [ ! -x /root/.cargo/bin/rustup ]; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
fi
export PATH=/root/.cargo/bin:$PATH
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal --component rust-src

cd /keystone
cargo xtask build   # setup (rust-src, bpf-linker against nightly's LLVM) + release build
install -m 0755 target/release/keystone-agent target/release/keystone-ctl /usr/local/bin/

client_if=$(iface_in 198.18.1.0/24)
ifaces=("$client_if")
services4="" services6=""
for b in $BACKENDS; do
  name=${b%%:*} net=${b##*:}
  ifaces+=("$(iface_in "198.18.$net.0/24")")
  line="      - { name: $name, weight: 50, environment: $name, labels: { version: \"1.0.0\" }"
  services4+="$line, address: \"198.18.$net.2:$BACKEND_PORT\" }"$'\n'
  services6+="$line, address: \"[2001:2:0:$net::2]:$BACKEND_PORT\" }"$'\n'
done

cat > /usr/local/sbin/keystone-net.sh <<NET
#!/bin/sh
# Forwarding on, no reverse-path filter, IPv6 addresses, NIC offloads XDP cannot use.
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
  net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
ip -6 addr replace 2001:2:0:1::1/64 dev $client_if nodad
$(for b in $BACKENDS; do n=${b##*:}; echo "ip -6 addr replace 2001:2:0:$n::1/64 dev \$(ip -o -4 addr show to 198.18.$n.0/24 | awk '{print \$2; exit}') nodad"; done)
for i in ${ifaces[*]}; do
  sysctl -qw net.ipv4.conf.\$i.rp_filter=0
  # virtio-net refuses native XDP while the host does GRO/LRO for it.
  ethtool -K \$i lro off rx-gro-hw off 2>/dev/null || true
done
NET
boot_script keystone-net /usr/local/sbin/keystone-net.sh

mkdir -p /etc/keystone
umask 077
[ -s /etc/keystone/token ] || head -c 24 /dev/urandom | base64 > /etc/keystone/token
umask 022
cat > /etc/keystone/keystone.yaml <<YAML
# Written by vagrant/provision/gateway.sh. Edit weights, then: keystone-ctl reload
interfaces: [$(IFS=,; echo "${ifaces[*]}" | sed 's/,/, /g')]
admin:
  listen: 127.0.0.1:9100
  token_file: /etc/keystone/token
tenants:
  - name: web
    listen: "$VIP4:$VIP_PORT"
    protocol: tcp
    mode: $MODE
    deployment_strategy: canary
    services:
$services4  - name: web6
    listen: "[$VIP6]:$VIP_PORT"
    protocol: tcp
    mode: $MODE
    deployment_strategy: canary
    services:
${services6%$'\n'}
YAML

cat > /etc/systemd/system/keystone-agent.service <<'UNIT'
[Unit]
Description=Keystone XDP load-balancer agent
After=network-online.target keystone-net.service
Wants=network-online.target
[Service]
ExecStart=/usr/local/bin/keystone-agent --config /etc/keystone/keystone.yaml
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable keystone-agent.service
systemctl restart keystone-agent.service
echo "gateway ready: KEYSTONE_TOKEN=\$(cat /etc/keystone/token) keystone-ctl status"
