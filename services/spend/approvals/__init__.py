"""GPU spend approvals: who may decide (policy), the workflow (service), and the one table an
approval's state moves by (lifecycle)."""
