"""Concrete compute and file-share backends behind the ports in services.core.ports."""
