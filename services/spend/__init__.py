"""Money: prices, price refresh, the ledger and budgets, the spend gate and approvals."""
