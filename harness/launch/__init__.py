"""Launchers: where sweep tasks run (in-process debug, local subprocesses, SLURM arrays via submitit)."""
