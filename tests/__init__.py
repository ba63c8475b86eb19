"""Tests: each sits beside the concept it checks and compares against an independent reference."""
