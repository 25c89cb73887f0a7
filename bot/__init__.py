"""Entry points and wiring: CLI, settings, composition root, transports, web app."""
