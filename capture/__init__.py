"""Capture: frame overlay, keyframe segmenter and per-frame metadata.

Turns the camera's packet stream into self-contained MPEG-TS segments with the facts
the evidence format needs (capture times, frame hashes). It never touches disks or
keys: sealed storage belongs to ``buffer``.
"""
