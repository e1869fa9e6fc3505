"""What the dashboard's pages share (no computation here: that is tli_core's).

``state``    the session's keys behind small accessor functions
``models``   the server-wide model cache and the cached layer scans
``widgets``  figures, CSV downloads, errors, search, the sidebar, job panels
``serve``    the launcher behind `make run`
"""
