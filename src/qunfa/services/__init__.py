"""Services: the use cases (accounts, campaigns, planning, dispatch, reconcile, sweep)."""
