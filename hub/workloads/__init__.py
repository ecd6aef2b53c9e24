"""Workloads: groups of processes to run (training jobs, sweeps), above any backend."""
