"""The HTTP machinery the routes share: access, errors, bodies, ranges, streams, patches."""
