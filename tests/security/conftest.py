"""The attacker's-view tests drive the same rig as the Slack tests."""

from tests.slack.conftest import fake, rig

__all__ = ["fake", "rig"]
