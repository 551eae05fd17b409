"""``python -m napari_cryospin.cli`` runs the ``cryospin`` command line."""

import sys

from . import main

sys.exit(main())
