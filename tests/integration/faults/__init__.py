"""Fault tests: real tocsin processes, brokers and PostgreSQL under kills, restarts and cuts."""
