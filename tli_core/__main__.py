import sys

from .util import quiet_libraries

quiet_libraries()  # before the libraries are imported: some log at import time

from .cli import main  # noqa: E402

sys.exit(main())
