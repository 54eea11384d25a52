"""Blueprints: thin HTTP adapters. Parse input, call a service, render JSON. Built by factories
that receive their services, so create_app shows every dependency."""
