"""Resumable uploads (tus): their rows, and where their bytes go until a job takes them."""
