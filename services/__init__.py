"""Everything that decides, and everything that touches the world except Slack."""
