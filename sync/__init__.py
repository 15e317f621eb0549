"""Dock sync: when docked, push sealed clips to the evidence store, verify, then release.

Nothing is built here yet (issue #4). This package exists so the design card's layout
is real; it deliberately holds no placeholder code.
"""
