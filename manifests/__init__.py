"""The bot's bundled data (read with importlib.resources): the Slack app manifest, the price
table, the job and cluster manifests."""
