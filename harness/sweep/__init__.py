"""Sweeps: sweep files -> validated cells -> a DAG of tasks launched locally or on SLURM (issue 5)."""
