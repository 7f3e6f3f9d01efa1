"""Tocsin's pipeline: configuration, data model, producer, relay, queues and CLI."""
