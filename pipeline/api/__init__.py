"""The HTTP API: alerts in, the inbox and operations out; part of the composition root."""
