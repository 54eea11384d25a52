"""Everything that exists because of gunicorn and the kernel: settings and hooks, the draining worker,
the wire, the socket filter, the metrics-file folding, the dev server. A request's path never enters it."""
