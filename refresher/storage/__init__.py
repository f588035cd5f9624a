"""Storage: where things are kept, how full it is, a full disk, removal, reconciliation, leases."""
