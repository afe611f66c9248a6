#!/usr/bin/env bash
# Builds iotlan and shows it at work on a simulated IoT LAN made of network namespaces:
# a switch, a router (10.77.0.1), an IoT device (10.77.0.2), a node (eth0, 10.77.0.3) and a pod.
# The pod gets net1 with its reserved IoT address, pings the router, and hears the device's mDNS.
# Nothing leaves the namespaces this script creates; they are removed on exit.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building (cargo build --release)"
cargo build --release --quiet -p iotlan
BIN="$PWD/target/release"

tag="demo$$"
ns() { echo "iotlan-$tag-$1"; }
state=$(mktemp -d /tmp/iotlan-demo.XXXXXX)
cleanup() {
    for n in pod node dev gw sw; do ip netns del "$(ns $n)" 2>/dev/null || true; done
    rm -rf "$state"
}
trap cleanup EXIT

for n in sw gw dev node pod; do ip netns add "$(ns $n)"; ip -n "$(ns $n)" link set lo up; done
ip -n "$(ns sw)" link add br0 type bridge
ip -n "$(ns sw)" link set br0 type bridge mcast_snooping 0
ip -n "$(ns sw)" link set br0 up
for n in gw dev node; do
    ip link add "iv$$$n" type veth peer name "ip$$$n"
    ip link set "iv$$$n" netns "$(ns $n)" name eth0
    ip link set "ip$$$n" netns "$(ns sw)"
    ip -n "$(ns sw)" link set "ip$$$n" master br0 up
    ip -n "$(ns $n)" link set eth0 up
done
ip -n "$(ns gw)" addr add 10.77.0.1/24 dev eth0
ip -n "$(ns dev)" addr add 10.77.0.2/24 dev eth0
ip -n "$(ns dev)" route add 224.0.0.0/4 dev eth0
ip -n "$(ns node)" addr add 10.77.0.3/24 dev eth0
ip -n "$(ns node)" route add default via 10.77.0.1

conf=$(cat <<JSON
{
  "cniVersion": "1.0.0", "name": "iot", "type": "iotlan",
  "driver": "auto", "probe": { "gateway": true, "timeoutMs": 800 },
  "stateDir": "$state",
  "ipam": {
    "type": "iotlan-ipam", "subnet": "10.77.0.0/24", "gateway": "10.77.0.1",
    "pool": ["10.77.0.200-10.77.0.239"],
    "reservations": { "home-assistant/home-assistant-0": "10.77.0.100" },
    "store": { "kind": "file", "dir": "$state" }
  }
}
JSON
)
echo "== the network config (as a Multus NetworkAttachmentDefinition carries it)"
echo "$conf"
cni() {
    ip netns exec "$(ns node)" env CNI_COMMAND="$1" CNI_CONTAINERID=demo0001 CNI_NETNS="/run/netns/$(ns pod)" \
        CNI_IFNAME=net1 CNI_PATH="$BIN" \
        CNI_ARGS="IgnoreUnknown=true;K8S_POD_NAMESPACE=home-assistant;K8S_POD_NAME=home-assistant-0" \
        "$BIN/iotlan" <<<"$conf"
}
echo "== ADD (as Multus runs it for the pod home-assistant/home-assistant-0)"
cni ADD
echo "== inside the pod"
ip -n "$(ns pod)" -br addr show dev net1
ip -n "$(ns pod)" -d link show dev net1 | sed -n '2,3p'
ip -n "$(ns pod)" route
echo "== the pod pings the router"
ip netns exec "$(ns pod)" ping -c 2 -W 1 10.77.0.1 | tail -2
echo "== the IoT device sends an mDNS packet to 224.0.0.251:5353; the pod listens on net1"
listener=$(mktemp)
ip netns exec "$(ns pod)" python3 - >"$listener" <<'PY' &
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 5353))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton("224.0.0.251"), socket.inet_aton("10.77.0.100")))
s.settimeout(5)
data, src = s.recvfrom(2048)
print(f"pod heard {data.decode()!r} from {src[0]}")
PY
sleep 0.5
ip netns exec "$(ns dev)" python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.sendto(b"_hap._tcp.local: hello from a HomeKit device", ("224.0.0.251", 5353))'
wait
cat "$listener"; rm -f "$listener"
echo "== DEL"
cni DEL && echo "net1 removed and the lease released: $(ip -n "$(ns pod)" -br link | grep -c net1 || true) net1 links left"
