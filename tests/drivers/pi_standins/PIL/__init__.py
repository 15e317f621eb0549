"""Stand-in for Pillow (test only; still-image saving is never exercised)."""
