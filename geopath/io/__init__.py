"""Files: checkpoints, data sets, architectures, run directories, traces, manifests, atomic writes."""
