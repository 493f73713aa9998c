"""Operator scripts; `stack.py` is importable so the integration tests start what `scripts/stack` starts."""
