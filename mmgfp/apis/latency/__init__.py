"""Measured latency: timing (``timing``), profiling a model into a latency table (``profile``)
and comparing predicted with measured time for a compact model (``check``)."""
