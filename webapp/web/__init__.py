"""The HTTP edge: the request pipeline, errors as HTTP, blueprints, request parsing and rendering."""
