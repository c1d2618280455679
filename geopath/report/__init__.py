"""Tables and figures of finished runs (torch-free)."""
