"""What the service says about itself: JSON log lines and Prometheus metrics."""
