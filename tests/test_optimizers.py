"""The engine's optimisers: the row-wise pose Adam is torch's SparseAdam, update and state."""

import torch

from napari_cryospin.engine.optimizers import RowAdam


def test_row_adam_follows_sparse_adam_row_for_row():
    torch.manual_seed(0)
    ours, theirs = (torch.nn.Embedding(50, 3, sparse=True) for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    opt_ours = RowAdam(ours.parameters(), lr=0.01)
    opt_theirs = torch.optim.SparseAdam(theirs.parameters(), lr=0.01)
    untouched = ours.weight[40:].detach().clone()
    for step in range(6):
        rows = torch.randint(0, 40, (12,))  # repeats included: their gradients add up
        target = torch.randn(12, 3)
        for emb, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            ((emb(rows) - target) ** 2).sum().backward()
            opt.step()
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opt_ours.state[ours.weight][key], opt_theirs.state[theirs.weight][key])
    assert torch.equal(ours.weight[40:], untouched)  # rows without a gradient never move
    opt_theirs.load_state_dict(opt_ours.state_dict())  # the same state: checkpoints carry over
