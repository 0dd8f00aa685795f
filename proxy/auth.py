"""Bearer-key authentication, compared in constant time."""

from __future__ import annotations

import hmac

from proxy.errors import AuthenticationFailed


class KeyCheck:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __call__(self, authorization: str | None) -> None:
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("missing API key: send `Authorization: Bearer <key>`")
        given = token.strip().encode()
        # Check every key so timing does not reveal which one nearly matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise AuthenticationFailed("invalid API key")
