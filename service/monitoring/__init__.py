"""The run monitor: per-step statistics of a training run's rewards (stats), the probes
scored beside its requests (probes, canaries), the hacking signals and alarm read from
them (signals), where they are kept (monitor) and the run's page (page)."""
