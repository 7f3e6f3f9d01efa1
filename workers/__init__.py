"""Workers: consume per-channel queues, claim, render, send and record each notification."""
