"""Helpers the tests share: clocks and waiting, jobs made in the store, clips, ZIP checks,
HTTP helpers and fakes. Fixtures live in the `conftest.py` files; helpers live here."""
