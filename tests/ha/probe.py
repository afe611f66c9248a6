"""Asks a running Home Assistant what it sees, through its own APIs, the way its frontend does.

Run with the test venv's python inside the pod's network namespace (tests/ha.rs). It judges nothing:
it prints one JSON object on stdout, and the Rust test asserts on it.

  1. waits (bounded) until HA's HTTP server answers GET /api/onboarding;
  2. creates the owner through onboarding (POST /api/onboarding/users, which needs no auth while HA is
     not onboarded: homeassistant/components/onboarding/views.py UserOnboardingView) and exchanges
     the auth code for an access token (POST /auth/token, grant_type=authorization_code);
  3. over the websocket API (/api/websocket):
     - `get_config`: HA's version;
     - `network`: the adapters and which are enabled (homeassistant/components/network/websocket.py);
     - `zeroconf/subscribe_discovery`: the services HA's zeroconf integration found for the types
       integrations ask for (homeassistant/components/zeroconf/websocket_api.py);
     - `config_entries/flow/progress`: the discovery flows in progress, what the UI shows as
       "Discovered" (homeassistant/components/config/config_entries.py);
     polling the last two until the service named by --service and a flow of --handler are there, or
     until --wait seconds have passed (the control waits the whole time).

Output: {"version", "adapters", "configured_adapters", "services", "flows", "waited_s"}.
"""

import argparse
import asyncio
import json
import sys
import time

import aiohttp


async def wait_http(session, base, limit):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{base}/api/onboarding", timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            last = repr(e)
        await asyncio.sleep(0.5)
    raise SystemExit(f"probe: Home Assistant's HTTP server did not answer within {limit} s ({last})")


async def token(session, base):
    client_id = f"{base}/"
    user = {"client_id": client_id, "name": "iotlan", "username": "iotlan",
            "password": "iotlan-test-only", "language": "en"}
    async with session.post(f"{base}/api/onboarding/users", json=user) as r:
        body = await r.text()
        if r.status != 200:
            raise SystemExit(f"probe: onboarding user: HTTP {r.status}: {body}")
        code = json.loads(body)["auth_code"]
    form = {"grant_type": "authorization_code", "code": code, "client_id": client_id}
    async with session.post(f"{base}/auth/token", data=form) as r:
        body = await r.text()
        if r.status != 200:
            raise SystemExit(f"probe: token: HTTP {r.status}: {body}")
        return json.loads(body)["access_token"]


class Ws:
    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 1, {}

    async def call(self, msg_type, **kw):
        msg_id = self.next_id
        self.next_id += 1
        await self.ws.send_json({"id": msg_id, "type": msg_type, **kw})
        while True:
            m = await self.ws.receive_json(timeout=30)
            if m.get("type") == "event":
                self.events.setdefault(m["id"], []).append(m["event"])
                continue
            if m.get("id") == msg_id:
                if not m.get("success"):
                    raise SystemExit(f"probe: {msg_type} failed: {m}")
                return msg_id, m.get("result")

    async def drain(self, seconds):
        """Collects subscription events for up to `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                m = await self.ws.receive_json(timeout=left)
            except asyncio.TimeoutError:
                return
            if m.get("type") == "event":
                self.events.setdefault(m["id"], []).append(m["event"])


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--startup", type=float, required=True, help="seconds to wait for HTTP")
    ap.add_argument("--wait", type=float, required=True, help="seconds to wait for the discovery")
    ap.add_argument("--service", required=True, help="zeroconf service name to wait for")
    ap.add_argument("--handler", required=True, help="integration whose discovery flow to wait for")
    args = ap.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await wait_http(session, base, args.startup)
        access = await token(session, base)
        async with session.ws_connect(f"{base}/api/websocket") as raw:
            first = await raw.receive_json(timeout=10)
            assert first["type"] == "auth_required", first
            await raw.send_json({"type": "auth", "access_token": access})
            ok = await raw.receive_json(timeout=10)
            if ok.get("type") != "auth_ok":
                raise SystemExit(f"probe: websocket auth: {ok}")
            ws = Ws(raw)
            _, config = await ws.call("get_config")
            _, network = await ws.call("network")
            sub, _ = await ws.call("zeroconf/subscribe_discovery")
            start = time.monotonic()
            services, flows = {}, []
            while True:
                await ws.drain(0.5)
                for ev in ws.events.get(sub, []):
                    for s in ev.get("add", []):
                        services[s["name"]] = s
                _, flows = await ws.call("config_entries/flow/progress")
                found = args.service in services and any(f["handler"] == args.handler for f in flows)
                if found or time.monotonic() - start >= args.wait:
                    break
    json.dump({
        "version": config.get("version"),
        "adapters": network["adapters"],
        "configured_adapters": network["configured_adapters"],
        "services": list(services.values()),
        "flows": flows,
        "waited_s": round(time.monotonic() - start, 2),
    }, sys.stdout)
    print()


if __name__ == "__main__":
    asyncio.run(main())
