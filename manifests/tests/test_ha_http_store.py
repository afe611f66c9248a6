"""Home Assistant's .storage/http, checked against the loader of the pinned Home Assistant (2026.11.0).

Followed: home-assistant/core homeassistant/components/http/config.py (store version 2; read at commit
044805b44d20d2ac08f57d0787ad589fed30f4a8) and homeassistant/components/http/const.py (defaults). The image
needs Python 3.14, so HA's code cannot be imported here: `ha_boot_config` below restates the decisions of
async_load_config, HTTPConfigStore.async_load and _HTTPStore._async_migrate_func step by step, and the
negative controls show it reproduces the defect the old version-1 seed caused."""

import json

from conftest import MANIFESTS

SEED = MANIFESTS / "home-assistant/base/home-assistant/config/http.json"
CONFIGURATION = MANIFESTS / "home-assistant/base/home-assistant/config/configuration.yaml"
STORAGE_VERSION = 2
# HTTP_STORAGE_SCHEMA({}) in config.py, with the defaults of const.py: what HA fills in for a missing key.
SCHEMA_DEFAULTS = {"server_port": 8123, "cors_allowed_origins": ["https://cast.home-assistant.io"],
                   "login_attempts_threshold": -1, "ip_ban_enabled": True, "ssl_profile": "modern",
                   "use_x_frame_options": True}


def schema(conf):
    """HTTP_STORAGE_SCHEMA: defaults for missing keys; use_x_forwarded_for and trusted_proxies are Inclusive."""
    out = dict(SCHEMA_DEFAULTS, **{k: v for k, v in conf.items() if k != "base_url"})
    assert ("use_x_forwarded_for" in out) == ("trusted_proxies" in out), "vol.Inclusive(..., 'proxy')"
    return out


def ha_boot_config(store_file, yaml_http=None):
    """(slot, config) HA 2026.11 boots with, for a .storage/http file and an optional http: YAML block."""
    stored = json.loads(store_file) if store_file else None
    stable, pending, migrated = schema({}), None, False
    if stored is not None:
        assert stored["key"] == "http"
        data = stored["data"]
        if stored["version"] == 1:  # _async_migrate_func: the v1 payload becomes `stable`, migration not done
            data = {"stable": schema(data), "pending": None, "yaml_migration_done": False}
        assert stored["version"] <= STORAGE_VERSION, "a newer store than HA knows"
        # async_load reads the three keys directly, with no schema: they must all be there
        stable, pending, migrated = data["stable"], data["pending"], data["yaml_migration_done"]
    slot = "pending" if pending is not None else "stable"
    conf = pending if pending is not None else stable
    if not migrated:  # async_migrate_yaml: YAML (or schema defaults without it) goes to `pending` unless == stable
        conf = schema(yaml_http or {})
        slot = "stable" if conf == stable else "pending"
    return slot, conf  # "pending" means: a trial that HA reverts (and restarts) after AUTO_REVERT_DELAY, 5 min


def test_seed_is_booted_as_stable_with_proxy_trust():
    slot, conf = ha_boot_config(SEED.read_text())
    assert slot == "stable", "a pending config is reverted after 5 minutes"
    assert conf["use_x_forwarded_for"] is True and conf["trusted_proxies"]


def test_seed_is_a_complete_version_2_store():
    stored = json.loads(SEED.read_text())
    assert (stored["version"], stored["key"]) == (STORAGE_VERSION, "http")
    data = stored["data"]
    assert set(data) == {"stable", "pending", "yaml_migration_done"}
    assert data["pending"] is None and data["yaml_migration_done"] is True
    # loaded without the schema, so every key the schema defaults must already be present, with valid values
    assert data["stable"] == schema(data["stable"]), "stable must be in normalised (schema-applied) form"


def test_configuration_yaml_has_no_http_block():
    """With the migration done, an http: block is ignored and raises a repair issue; the store is the one place."""
    text = CONFIGURATION.read_text()
    assert not [ln for ln in text.splitlines() if ln.startswith("http:")]


def test_the_old_version_1_seed_would_boot_pending_without_trust():
    """Negative control: the defect of the previous seed, reproduced by the model (400 through the Ingress)."""
    v1 = json.dumps({"version": 1, "minor_version": 1, "key": "http",
                     "data": {"use_x_forwarded_for": True, "trusted_proxies": ["10.42.0.0/16"]}})
    slot, conf = ha_boot_config(v1)
    assert slot == "pending" and "trusted_proxies" not in conf


def test_a_yaml_http_block_alone_would_boot_pending():
    """Negative control: configuring trust by YAML only ends up as an unconfirmed trial that HA reverts."""
    slot, conf = ha_boot_config(None, {"use_x_forwarded_for": True, "trusted_proxies": ["10.42.0.0/16"]})
    assert slot == "pending"
