"""Scheduled jobs (service) and the one module that drives APScheduler (timer)."""
