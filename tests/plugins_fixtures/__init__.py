"""Plugin modules that tests load through fake entry points (``plugins_fixtures.NAME``)."""
