"""Fakes of external services (Slack, Azure) that the real client libraries talk to in tests."""
