#!/usr/bin/env bash
# Backend: answers HTTP and UDP on $BACKEND_PORT with its name (vagrant/backend.py,
# the same protocol as ks-backend), routes replies via the gateway; in DSR mode it
# holds the VIPs on lo and does not answer ARP for them.
source /vagrant/provision/common.sh

apt-get update -q
apt-get install -y -q --no-install-recommends python3 iproute2 ethtool procps

if_=$(iface_in "198.18.$NET.0/24")
{
  echo "#!/bin/sh"
  echo "ip -6 addr replace 2001:2:0:$NET::2/64 dev $if_ nodad"
  # Only the lab's prefixes go via the gateway; the VM keeps Vagrant's default route.
  echo "ip route replace 198.18.0.0/15 via 198.18.$NET.1"
  echo "ip -6 route replace 2001:2::/48 via 2001:2:0:$NET::1"
  echo "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.$if_.rp_filter=0"
  if [ "$MODE" = dsr ]; then
    echo "ip addr replace $VIP4/32 dev lo"
    echo "ip -6 addr replace $VIP6/128 dev lo nodad"
    echo "sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2"
  fi
} > /tmp/keystone-net.sh
boot_script keystone-net /tmp/keystone-net.sh

install -m 0755 /vagrant/backend.py /usr/local/bin/keystone-lab-backend
cat > /etc/systemd/system/keystone-lab-backend.service <<UNIT
[Unit]
Description=Keystone lab backend $NAME
After=network-online.target keystone-net.service
[Service]
ExecStart=/usr/local/bin/keystone-lab-backend --name $NAME --port $BACKEND_PORT
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable keystone-lab-backend.service
systemctl restart keystone-lab-backend.service
echo "backend $NAME ready on :$BACKEND_PORT"
