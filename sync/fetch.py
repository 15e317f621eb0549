"""Back-office side: bring a clip from the evidence store to a local folder to verify.

``s3://bucket/devices/<id>/clips/<clip>`` is copied (with the device record beside it,
as the dock share holds them) into a directory laid out like the store's keys, so the
same verifier and exporter read it. Every object is fetched as stored: nothing is
trusted until ``bwv verify`` has checked it.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from sync.target import Target, TargetError


def parse_s3_url(url: str) -> tuple[str, str]:
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc or "/clips/" not in u.path:
        raise TargetError(f"{url}: expected s3://BUCKET/devices/DEVICE/clips/CLIP")
    return u.netloc, u.path.strip("/")


def fetch_clip(target: Target, clip_key: str, dest: Path) -> Path:
    """Copy ``devices/<id>/clips/<clip>/*`` and ``devices/<id>/device.json`` under dest."""
    clip_key = clip_key.strip("/")
    device_prefix = clip_key.split("/clips/")[0]
    keys = [k for k in target.list(clip_key + "/") if "/" not in k[len(clip_key) + 1:]]
    if not keys:
        raise TargetError(f"{target.description}: no objects under {clip_key}/")
    for key in keys + [f"{device_prefix}/device.json"]:
        path = dest / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(target.get(key))
    return dest / clip_key
