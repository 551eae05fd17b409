"""The tiny run the engine tests share: 3 heads, 3 epochs (exploring, auto-encoding, auto-decoding) on CPU."""

TINY_RUN = dict(
    heads=3,
    epochs=3,
    explore_epochs=1,
    switch=2,
    device="cpu",
    encoder_width=4,
    encoder_box=16,
    batch_size=50,
)
"""``RunConfig`` fields of the tiny run (box 32 data; each test adds its own reporting settings)."""
