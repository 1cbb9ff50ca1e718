#!/usr/bin/env bash
# Client: routes the VIPs via the gateway; curl and a small load tool.
source /vagrant/provision/common.sh

apt-get update -q
apt-get install -y -q --no-install-recommends curl iproute2 ethtool procps

if_=$(iface_in 198.18.1.0/24)
cat > /tmp/keystone-net.sh <<NET
#!/bin/sh
ip -6 addr replace 2001:2:0:1::2/64 dev $if_ nodad
ip route replace $VIP4/32 via 198.18.1.1
ip -6 route replace $VIP6/128 via 2001:2:0:1::1
NET
boot_script keystone-net /tmp/keystone-net.sh

echo "client ready: curl http://$VIP4:$VIP_PORT/ ; curl 'http://[$VIP6]:$VIP_PORT/'"
