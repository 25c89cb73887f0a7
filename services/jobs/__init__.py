"""Jobs: submit and read (service), dispatch and follow (runner), log tailing, job.json sources."""
