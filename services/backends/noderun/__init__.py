"""The node-runner launch protocol both backends share: launch helpers, spec builder, runner."""
