"""Clusters: create, resize, auto-scale and delete (service), idle warnings and scale-down."""
