"""The example training jobs, one folder each: shipped with the bot, copied onto the share at
start-up."""
