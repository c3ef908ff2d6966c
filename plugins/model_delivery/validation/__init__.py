"""Checks that decide whether a candidate may go on: the gate (and, later, data checks)."""
