"""Workspaces and experiments (Batch AI 2018-03-01 on): where clusters and jobs belong."""
