"""Bearer-key authentication, compared in constant time; a match names the client key."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from proxy.config.scale import KeySettings
from proxy.errors import AuthenticationFailed


@dataclass(frozen=True)
class ClientKey:
    """Who sent a request, as logs, metrics and the state backend may name them."""

    name: str  # `server.keys[].name`, or `api_keys.<i>` for the shorthand
    digest: str  # a hash of the key: Redis keys carry this, never the key
    limits: KeySettings | None = None  # None: no limits (the `api_keys` shorthand)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class KeyCheck:
    def __init__(self, keys: list[str], named: list[KeySettings] | None = None) -> None:
        entries = [(k, ClientKey(f"api_keys.{i}", key_digest(k))) for i, k in enumerate(keys)]
        entries += [(k.key, ClientKey(k.name, key_digest(k.key), k)) for k in named or []]
        self._keys = [(key.encode(), client) for key, client in entries]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __call__(self, authorization: str | None) -> ClientKey | None:
        """The matching key; None when the server has no keys (auth is off)."""
        if not self._keys:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("missing API key: send `Authorization: Bearer <key>`")
        given = token.strip().encode()
        # Check every key so timing does not reveal which one nearly matched.
        matched: ClientKey | None = None
        for key, client in self._keys:
            if hmac.compare_digest(given, key) and matched is None:
                matched = client
        if matched is None:
            raise AuthenticationFailed("invalid API key")
        return matched
