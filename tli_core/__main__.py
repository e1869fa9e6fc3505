import sys

from .jobs.stopping import early_handler
from .util import quiet_libraries

if sys.argv[1:2] in (["worker"], ["evaluate-worker"], ["downstream-worker"]):  # a Stop while the libraries
    early_handler()  # import is remembered and acted on at the first check, not a kill that records nothing

quiet_libraries()  # before the libraries are imported: some log at import time

from .cli import main  # noqa: E402

sys.exit(main())
