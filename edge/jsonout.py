"""JSON for the device's outputs: HTTP answers, server-sent events, MQTT payloads.

Standard library only: this file ships to the device, and serve_mqtt reads it without the server.
"""
from __future__ import annotations

import json


def to_json(obj) -> bytes:
    """JSON that is ASCII, one line and safe inside HTML too (no raw <, > or &)."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()
