"""Offline (bag replay) and closed-loop evaluation: metrics, reports and plots."""
