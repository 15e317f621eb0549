"""Stand-in for PiDNG (test only; DNG writing is never exercised)."""
