"""The shared kernel: errors, clocks, log context, domain events and the ports (Protocols)."""
