"""Delivery of stored domain events to the transports (relay)."""
