"""The azure backend: VM Scale Set clusters, jobs by managed run command, the Azure Files share."""
