"""napari-cryospin: ab-initio cryo-EM reconstruction with cryoSPIN, watched live in napari.

Importing the package is cheap: no torch, Qt or napari import happens here.
"""

__version__ = "0.1.0"
