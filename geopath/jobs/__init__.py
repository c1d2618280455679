"""The jobs (sparsify, merge, connect, transition) and what they share; glue between io, core and peers."""
