"""A simulated ESPHome device: a real mDNS responder (python-zeroconf) announcing `_esphomelib._tcp`.

Run with the test venv's python inside the device's network namespace (tests/ha.rs). It publishes
`<name>._esphomelib._tcp.local.` on port 6053 (ESPHome's native API) for --address, with the TXT keys
Home Assistant's esphome discovery reads (homeassistant/components/esphome/config_flow.py
async_step_zeroconf: `mac`, lowercase without colons, and `friendly_name`) and the others an ESPHome
firmware sends (version, platform, board, network). It answers queries until SIGTERM or --lifetime.
"""

import argparse
import signal
import socket
import sys
import threading

from zeroconf import IPVersion, ServiceInfo, Zeroconf

ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--friendly-name", required=True)
ap.add_argument("--address", required=True)
ap.add_argument("--mac", required=True, help="12 hex digits, lowercase")
ap.add_argument("--lifetime", type=float, required=True, help="seconds before it stops by itself")
args = ap.parse_args()

info = ServiceInfo(
    "_esphomelib._tcp.local.",
    f"{args.name}._esphomelib._tcp.local.",
    addresses=[socket.inet_aton(args.address)],
    port=6053,
    properties={
        "friendly_name": args.friendly_name,
        "version": "2025.12.0",
        "mac": args.mac,
        "platform": "ESP32",
        "board": "esp32dev",
        "network": "wifi",
    },
    server=f"{args.name}.local.",
)
zc = Zeroconf(interfaces=[args.address], ip_version=IPVersion.V4Only)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
zc.register_service(info)
print(f"esphome_device: announcing {info.name} at {args.address}:6053", flush=True)
stop.wait(args.lifetime)
zc.unregister_service(info)
zc.close()
sys.exit(0)
