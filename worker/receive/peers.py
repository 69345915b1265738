"""Who may send: calling AE titles (each optionally bound to an address) and TLS.

An AE title is no authentication: any host can claim one. Binding a title to its address
(``MODALITY1@10.0.0.5``) narrows that to the hosts a site lists; TLS with a CA file, which
demands a client certificate, is the real check (docs/receiving.md).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from worker.config import ReceiveSettings
from worker.errors import ConfigError


@dataclass(frozen=True)
class AllowedPeers:
    """Calling AE title -> the addresses it may come from (an empty set: any address).
    No entries at all: anyone may send."""

    entries: dict[str, frozenset[str]]

    @classmethod
    def parse(cls, items: Iterable[str]) -> AllowedPeers:
        entries: dict[str, set[str]] = {}
        for item in items:
            title, sep, address = item.partition("@")
            title = title.strip()
            if not title or len(title) > 16 or "\\" in title or not title.isprintable():
                raise ConfigError(f"[receive] allowed_aets: {item!r} is not an AE title (1-16 characters)")
            addresses = entries.setdefault(title, set())
            if sep:
                try:
                    addresses.add(str(ipaddress.ip_address(address.strip())))
                except ValueError:
                    raise ConfigError(
                        f"[receive] allowed_aets: {item!r}: {address.strip()!r} is not an IP address"
                    ) from None
            else:
                addresses.add("*")
        return cls({t: frozenset() if "*" in a else frozenset(a) for t, a in entries.items()})

    def allows(self, title: str, address: str) -> bool:
        if not self.entries:
            return True
        title = title.strip()
        if title not in self.entries:
            return False
        addresses = self.entries[title]
        return not addresses or normal_address(address) in addresses


def normal_address(address: str) -> str:
    """An IP address as written in ``allowed_aets`` (IPv4-mapped IPv6 as IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:10.0.0.5 on a dual-stack socket
    return str(mapped or ip)


def tls_context(settings: ReceiveSettings) -> ssl.SSLContext | None:
    """A TLS server context from [receive] tls_*, or None for plain TCP. ``ConfigError``.
    The handshake is done in each connection's thread, within its request_timeout
    (``worker/receive/admission.py``)."""
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_ca
    if not (cert or key or ca):
        return None
    if not (cert and key):
        raise ConfigError("[receive] tls_cert and tls_key: TLS needs both (or neither, and no tls_ca)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(Path(cert), Path(key))
        if ca:
            context.load_verify_locations(cafile=Path(ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[receive] TLS: cannot load {cert}, {key}{', ' + ca if ca else ''}: {exc}"
        ) from None
    return context
