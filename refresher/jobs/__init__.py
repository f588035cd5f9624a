"""Jobs: their statuses, records, lifecycle, events and expiry."""
