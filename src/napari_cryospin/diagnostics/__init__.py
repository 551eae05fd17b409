"""What the data say about themselves before a run: polarity, and whether the images follow their CTFs."""
