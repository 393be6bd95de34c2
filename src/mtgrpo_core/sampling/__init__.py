"""Sampling (Algorithm 2): the ratio-preserving sampler and its parts.

`sampler` runs one step's batch conversation; `config` holds its settings; `targets` turns weights into per-task
counts, picks the batch from the accepted groups and guards tasks without signal; `acceptance` estimates filter
rates and inflates requests; `planners` and `joint_planner` plan each round's requests; `carry_pool` keeps the
informative surplus for the next step; `batch` holds the request, batch and report types and the step's ledger.
"""
