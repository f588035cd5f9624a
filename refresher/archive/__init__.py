"""The archive: a job's ZIP entries and their byte layout."""
