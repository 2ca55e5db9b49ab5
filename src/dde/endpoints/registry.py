"""Endpoint operations shared by the CLI and the API: list, add, drain, enable, disable,
remove. Changes go through :class:`~dde.config_store.ConfigStore`; a running router applies
them within a second, without a restart and without dropping associations in progress.
"""

from __future__ import annotations

from typing import Any

from dde.config import ConfigError, EndpointSettings, EndpointState, Settings
from dde.config_store import ConfigStore
from dde.routing.published import PublishedEndpoints
from dde.routing.router import Router
from dde.store.ledger import Ledger
from dde.store.status_board import UNKNOWN


class EndpointError(Exception):
    """A refused endpoint operation; the message says why and what to do."""


def _find(settings: Settings, name: str) -> EndpointSettings:
    endpoint = settings.endpoint(name)
    if endpoint is None:
        known = ", ".join(e.name for e in settings.endpoints) or "none"
        raise EndpointError(f"no endpoint named {name!r} (known: {known})")
    return endpoint


def describe(settings: Settings, ledger: Ledger | None) -> list[dict[str, Any]]:
    """Every endpoint with its configuration and, if the router published it, live status."""
    board = ledger.status_board.read() if ledger is not None else {}
    counts = ledger.operators.state_counts() if ledger is not None else {}
    rows = []
    for e in settings.endpoints:
        live = board.get(e.name, UNKNOWN)
        c = counts.get(e.name, {})
        rows.append({
            "name": e.name, "kind": e.kind.value, "aet": e.aet, "host": e.host,
            "port": e.port, "url": e.url, "groups": list(e.groups), "weight": e.weight,
            "state": e.state.value, "storage_commitment": e.storage_commitment,
            "health": live.health, "breaker": live.breaker,
            "last_error": live.last_error, "load": live.load,
            "queued": int(c.get("pending", 0)),
            "failed": int(c.get("failed", 0)),
            "delivered": int(c.get("delivered", 0)),
        })
    return rows


def add_endpoint(store: ConfigStore, endpoint: EndpointSettings) -> Settings:
    def change(settings: Settings) -> Settings:
        if settings.endpoint(endpoint.name) is not None:
            raise EndpointError(f"an endpoint named {endpoint.name!r} exists already")
        return settings.model_copy(update={"endpoints": [*settings.endpoints, endpoint]})

    return _update(store, change)


def update_endpoint(store: ConfigStore, name: str, **fields: Any) -> Settings:
    """Change fields of one endpoint (state, weight, groups, …)."""
    def change(settings: Settings) -> Settings:
        current = _find(settings, name)
        data = current.model_dump(mode="python")
        data.update(fields)
        replaced = EndpointSettings.model_validate(data)
        endpoints = [replaced if e.name == name else e for e in settings.endpoints]
        return settings.model_copy(update={"endpoints": endpoints})

    return _update(store, change)


def set_state(store: ConfigStore, name: str, state: EndpointState) -> Settings:
    return update_endpoint(store, name, state=state)


def remove_endpoint(store: ConfigStore, ledger: Ledger | None, name: str,
                    force: bool = False) -> tuple[Settings, int, str | None]:
    """Remove an endpoint. Refused while deliveries wait for it, unless ``force``: then they
    are redirected to another enabled member of its group. Returns (settings, redirected,
    target)."""
    with store.locked():
        settings = store.settings()
        endpoint = _find(settings, name)
        waiting = ledger.operators.waiting_count(name) if ledger is not None else 0
        target: str | None = None
        if waiting and not force:
            raise EndpointError(
                f"{waiting} deliveries are still queued or failed for {name}; wait for them "
                f"(`dde endpoints drain {name}`), or use --force to redirect them to another "
                "member of its group")
        if waiting:
            target = _redirect_target(store, settings, endpoint, ledger)
            if target is None:
                raise EndpointError(f"--force: no other enabled endpoint shares a group with "
                                    f"{name} to take its {waiting} deliveries")
    # the lock is released: update() takes it again
    settings = _update(store, lambda s: s.model_copy(
        update={"endpoints": [e for e in s.endpoints if e.name != name]}))
    redirected = 0
    if target is not None and ledger is not None:
        redirected = ledger.moves.redirect_all(name, target, "endpoint removed with --force")
    return settings, redirected, target


def _redirect_target(store: ConfigStore, settings: Settings, endpoint: EndpointSettings,
                     ledger: Ledger | None) -> str | None:
    """Where a forcibly removed endpoint's deliveries go: the member its group's strategy
    picks (as the router would for failover), with the loads and health the running router
    published."""
    if ledger is None:
        return None
    view = PublishedEndpoints(ledger.status_board, settings.health.failover_after_seconds,
                              max_age=0)
    router = Router(settings.routing, settings.endpoints, view, view, store.ruleset(settings))
    queued = ledger.queue.queued_counts()
    for group in endpoint.groups:
        target = router.choose_target(group, queued, exclude={endpoint.name})
        if target is not None:
            return target
    return None


def _update(store: ConfigStore, change: Any) -> Settings:
    try:
        return store.update(change)
    except ConfigError as exc:
        raise EndpointError(str(exc)) from None
