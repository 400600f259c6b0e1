"""The address orb8 serves on: a plain value type shared by the settings
(which parse it) and the HTTP output (which binds it), so that neither has to
import the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(value: str) -> Listen:
    host, sep, port_text = str(value).rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT or :PORT")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return Listen(host, port)
