"""The thin napari layer: manifest commands, readers, writer, sample data, widgets."""
