"""Workspaces and experiments (Batch AI 2018-05-01 on): where clusters and jobs belong."""
