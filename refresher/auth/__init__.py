"""Auth: signed tokens and the team's credentials."""
