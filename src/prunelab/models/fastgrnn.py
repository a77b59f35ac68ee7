"""FastGRNN (Kusupati et al. 2018) with low-rank W and U, for sequence classification.

Per time step, with W = W2 W1 (rank ``w_rank``) and U = U2 U1 (rank ``u_rank``):

    pre  = W x_t + U h_{t-1}
    z_t  = sigmoid(pre + b_z)
    h~_t = tanh(pre + b_h)
    h_t  = (sigmoid(zeta) (1 - z_t) + sigmoid(nu)) * h~_t + z_t * h_{t-1}

and a linear classifier reads the last hidden state. This is EdgeML's ``FastGRNNCell`` (the code
Global MP uses for HAR-2, Gupta et al. 2022, sec. 3.1: full-rank start r_W = 9, r_U = 80, hidden
80). The four factors are bias-free ``nn.Linear`` modules, so module hooks count their MACs per time
step and unstructured pruning sees them as ordinary linear weights; structured pruning of the
factors removes rank dimensions (the ``w_rank`` / ``u_rank`` width units). W x_t is computed for
all steps at once (one call of W1 and W2 over the whole sequence), U h_{t-1} once per step.

Input: (batch, T, features). Initialisation as EdgeML: factors N(0, 0.1^2), both biases 1,
zeta = 1, nu = -4; the classifier uses PyTorch's default rule.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.models.common import check_int, out_width
from prunelab.models.registry import WidthUnit, register_family, register_model

ZETA_INIT = 1.0
NU_INIT = -4.0


class FastGRNNCell(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, w_rank: int, u_rank: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.w1 = nn.Linear(input_size, w_rank, bias=False)
        self.w2 = nn.Linear(w_rank, hidden_size, bias=False)
        self.u1 = nn.Linear(hidden_size, u_rank, bias=False)
        self.u2 = nn.Linear(u_rank, hidden_size, bias=False)
        self.bias_gate = nn.Parameter(torch.ones(hidden_size))
        self.bias_update = nn.Parameter(torch.ones(hidden_size))
        self.zeta = nn.Parameter(torch.full((1,), ZETA_INIT))
        self.nu = nn.Parameter(torch.full((1,), NU_INIT))

    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        """W x for every step of ``x`` (..., features) at once."""
        return self.w2(self.w1(x))

    def step(self, wx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One update from the projected input ``wx`` (batch, hidden) and the previous state ``h``."""
        pre = wx + self.u2(self.u1(h))
        z = torch.sigmoid(pre + self.bias_gate)
        candidate = torch.tanh(pre + self.bias_update)
        return (torch.sigmoid(self.zeta) * (1.0 - z) + torch.sigmoid(self.nu)) * candidate + z * h

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """Run over ``x`` (batch, T, features); return the last hidden state."""
        wx = self.input_projection(x)
        if h is None:
            h = wx.new_zeros(x.shape[0], self.hidden_size)
        for t in range(x.shape[1]):
            h = self.step(wx[:, t], h)
        return h


class FastGRNN(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, w_rank: int, u_rank: int, num_classes: int) -> None:
        super().__init__()
        self.cell = FastGRNNCell(input_size, hidden_size, w_rank, u_rank)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.cell(x))


def fastgrnn(input_size: int = 9, hidden_size: int = 80, w_rank: int | None = None, u_rank: int | None = None,
             num_classes: int = 2) -> FastGRNN:
    """Build FastGRNN. ``w_rank`` / ``u_rank`` default to full rank (``input_size`` / ``hidden_size``,
    still factorised)."""
    input_size = check_int("input_size", input_size)
    hidden_size = check_int("hidden_size", hidden_size)
    w_rank = check_int("w_rank", input_size if w_rank is None else w_rank)
    u_rank = check_int("u_rank", hidden_size if u_rank is None else u_rank)
    model = FastGRNN(input_size, hidden_size, w_rank, u_rank, check_int("num_classes", num_classes))
    init(model)
    return model


def units(model: FastGRNN) -> list[WidthUnit]:
    """The rank of W (W1's outputs) and of U (U1's outputs)."""
    cell = model.cell
    return [WidthUnit("cell.w_rank", None, "cell.w1", "w_rank", None, out_width(cell.w1)),
            WidthUnit("cell.u_rank", None, "cell.u1", "u_rank", None, out_width(cell.u1))]


def init(model: FastGRNN) -> None:
    """EdgeML's rule: factors 0.1 x N(0, 1), biases 1, zeta 1, nu -4; classifier PyTorch default."""
    cell = model.cell
    with torch.no_grad():
        for factor in (cell.w1, cell.w2, cell.u1, cell.u2):
            factor.weight.normal_(0.0, 0.1)
        cell.bias_gate.fill_(1.0)
        cell.bias_update.fill_(1.0)
        cell.zeta.fill_(ZETA_INIT)
        cell.nu.fill_(NU_INIT)
    model.fc.reset_parameters()


def input_shape(kwargs: dict) -> tuple[int, ...]:
    """HAR-2: 128 steps of ``input_size`` (9) features."""
    return (128, int(kwargs.get("input_size", 9)))


register_family("fastgrnn", fastgrnn, units=units, init=init, input_shape=(128, 9), task="sequence",
                shape_of=input_shape, doc="FastGRNN with low-rank W and U")
register_model("fastgrnn", "fastgrnn", input_size=9, hidden_size=80, w_rank=9, u_rank=80, num_classes=2,
               doc="FastGRNN for HAR-2, full rank (r_W=9, r_U=80)")
