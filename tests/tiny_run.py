"""The tiny run the engine tests share: 3 heads, 3 epochs (exploring, auto-encoding, auto-decoding) on CPU."""

TINY_RUN = dict(
    heads=3,
    epochs=3,
    explore_epochs=1,
    explore_extend="off",  # the tiny set's halves are near chance: a fixed length keeps the stages known
    switch=2,
    device="cpu",
    encoder_width=4,
    encoder_box=16,
    batch_size=50,
)
"""``RunConfig`` fields of the tiny run (box 32 data; each test adds its own reporting settings)."""
