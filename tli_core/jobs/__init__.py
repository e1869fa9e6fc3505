"""Jobs: training runs, sweeps, evaluations and downstream benchmarks, one runner for all of them.

``process``  process tags (pid + start time), the one-job-at-a-time lock, spawning a worker
``jobdir``   the job-directory base shared by runs and sweeps (status, stop, liveness)
``stopping`` a job's stop within seconds in any phase (SIGTERM or STOP file; interruptible sections)
``runner``   ``start_run``, ``start_sweep``, ``start_evaluation``: check -> busy -> create -> launch,
             called by every page and CLI command that starts work
"""
