"""Quantized word-level language models for Penn Treebank (QNN §b.2/b.4: RNN, GRU and LSTM rows;
"comparable accuracy as their 32-bit counterparts using only 4-bits").

Embedding -> dropout -> one recurrent layer per ``hidden`` entry -> dropout -> Linear decoder, on
(T, B) token tensors; ``lstm_lm``, ``gru_lm`` and ``rnn_lm`` differ only in the cell. The paper's
sizes, optimizer and exactly what it quantizes are [U]; the choices here:

* each cell's input and recurrent matrices (W_ih, W_hh) go through the scheme's ``weight``
  quantizer; the embedding stays float and the decoder is the scheme's ``last_layer.weight`` (float
  in the presets: ``quant.last_layer=float``, as the first and last layers of QNN's ConvNets);
* the hidden state h_t (the input of every recurrent and layer-to-layer product) goes through the
  scheme's ``activation`` quantizer. It lies in (-1, 1) in every cell (LSTM: o * tanh(c); GRU: a
  convex mix of tanh and the previous h; RNN: tanh), the qnn_linear grid. The LSTM's cell state
  stays float. ``quantize_gates=True`` also quantizes the gates after their nonlinearities;
* weight quantizers whose grid takes a scale (``takes_scale``: qnn_linear, qnn_log) get
  ``scale = AP2(1/sqrt(H))`` per layer unless ``quant.weight_kwargs`` sets one, so the fixed-point
  grid covers the weights' init range U(-1/sqrt(H), 1/sqrt(H)) instead of [-1, 1) (where 4-bit
  steps of 1/8 would round almost every weight to 0);
* sizes: ``model.hidden`` lists the layers' units (the presets: one layer of 300), the embedding is
  ``model.embed_dim`` (null: the first layer's units), dropout ``model.dropout_hidden`` (0.5); all
  [U]. ``width_mult`` scales the units and the embedding, as it does the other models' widths;
* the gates use one bias (on the input projection); torch's cells have a second, recurrent one,
  which only the GRU's candidate (inside ``r * ...``) would make differ;
* the cells are not ``QuantLayer``s: their latent weights are neither clipped by
  ``LatentWeightClipper`` nor given a Glorot LR scale (the STE window, ``clip * scale``, already
  stops the loss from pushing them past the grid).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import QuantLinear
from ..nn.layers import _quantizer
from .common import scheme

# the scheme the factories build with when given none (conf/experiment/qnn_ptb_*.yaml's)
DEFAULT_QUANT = {"weight": "qnn_linear", "w_bits": 4, "activation": "qnn_linear", "a_bits": 4, "last_layer": "float"}


class QuantRecurrent(nn.Module):
    """One recurrent layer whose weights and hidden state pass through quantizers. Subclasses set
    ``gates`` (blocks of ``hidden_size`` rows in the weights) and ``step`` (one time step). The
    state is a tuple of (B, H) tensors whose first entry is h."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, *, weight_quantizer=None, act_quantizer=None,
                 quantize_gates: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(self.gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(self.gates * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(self.gates * hidden_size))
        self.weight_quantizer = _quantizer(weight_quantizer)
        self.act_quantizer = _quantizer(act_quantizer)
        self.quantize_gates = quantize_gates
        bound = 1.0 / math.sqrt(hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias):
            nn.init.uniform_(p, -bound, bound)  # torch.nn.LSTM's / GRU's / RNN's init

    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (like.new_zeros(batch, self.hidden_size),)

    def step(self, x_t, state, w_hh):
        raise NotImplementedError

    def forward(self, x, state=None):
        """x (T, B, input) -> outputs (T, B, H), final state."""
        steps, batch, _ = x.shape
        if state is None:
            state = self.initial_state(batch, x)
        w_hh = self.weight_quantizer(self.weight_hh)
        x_proj = F.linear(x, self.weight_quantizer(self.weight_ih), self.bias)
        outputs = []
        for t in range(steps):
            state = self.step(x_proj[t], state, w_hh)
            outputs.append(state[0])
        return torch.stack(outputs), state


class QuantLSTM(QuantRecurrent):
    """LSTM (gate order i, f, g, o); the state is (h, c), c float."""

    gates = 4

    def initial_state(self, batch, like):
        zeros = like.new_zeros(batch, self.hidden_size)
        return (zeros, zeros)

    def step(self, x_t, state, w_hh):
        h, c = state
        i, f, g, o = (x_t + F.linear(h, w_hh)).chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        if self.quantize_gates:
            q = self.act_quantizer
            i, f, g, o = q(i), q(f), q(g), q(o)
        c = f * c + i * g
        return (self.act_quantizer(o * torch.tanh(c)), c)


class QuantGRU(QuantRecurrent):
    """GRU (gate order r, z, n, torch's): h' = (1 - z) * n + z * h, n = tanh(x_n + r * (W_hn h))."""

    gates = 3

    def step(self, x_t, state, w_hh):
        (h,) = state
        x_r, x_z, x_n = x_t.chunk(3, dim=1)
        h_r, h_z, h_n = F.linear(h, w_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        if self.quantize_gates:
            r, z = self.act_quantizer(r), self.act_quantizer(z)
        n = torch.tanh(x_n + r * h_n)
        return (self.act_quantizer((1 - z) * n + z * h),)


class QuantRNN(QuantRecurrent):
    """Elman RNN: h' = tanh(W_ih x + W_hh h + b)."""

    def step(self, x_t, state, w_hh):
        (h,) = state
        return (self.act_quantizer(torch.tanh(x_t + F.linear(h, w_hh))),)


CELLS = {"lstm": QuantLSTM, "gru": QuantGRU, "rnn": QuantRNN}


class RecurrentLanguageModel(nn.Module):
    def __init__(self, cell: str, vocab_size: int, embed_dim: int, hidden: tuple[int, ...], dropout: float,
                 weight_specs, act_spec, decoder_spec, quantize_gates: bool):
        super().__init__()
        self.cell = cell
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        self.drop = nn.Dropout(dropout)
        sizes = (embed_dim,) + tuple(hidden)
        self.layers = nn.ModuleList(
            CELLS[cell](sizes[i], sizes[i + 1], weight_quantizer=weight_specs[i], act_quantizer=act_spec,
                        quantize_gates=quantize_gates)
            for i in range(len(hidden)))
        self.decoder = QuantLinear(hidden[-1], vocab_size, bias=True, weight_quantizer=decoder_spec, init="torch")

    def forward(self, tokens: torch.Tensor, state=None):
        """tokens (T, B) -> logits (T, B, vocab), new state (a list of per-layer state tuples;
        the language-model loop detaches it between truncated-BPTT segments)."""
        x = self.drop(self.embedding(tokens))
        new_state = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, None if state is None else state[i])
            x = self.drop(x)
            new_state.append(s)
        return self.decoder(x), new_state


def _language_model(cell: str, *, num_classes, quant, hidden, embed_dim, width_mult, dropout_hidden,
                    quantize_gates) -> RecurrentLanguageModel:
    quant = scheme(quant, DEFAULT_QUANT)
    sizes = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not sizes:
        raise ValueError("model.hidden is empty: a language model needs at least one recurrent layer")
    sizes = tuple(max(1, int(h * width_mult)) for h in sizes)
    embed = sizes[0] if embed_dim is None else max(1, int(embed_dim * width_mult))
    weights = []
    for h in sizes:
        weight = quant.weight
        if weight.cls.takes_scale and "scale" not in weight.kwargs:
            weight = weight.updated(scale=2.0 ** round(math.log2(1.0 / math.sqrt(h))))
        weights.append(weight)
    return RecurrentLanguageModel(cell, num_classes, embed, sizes, dropout_hidden, weight_specs=weights,
                                  act_spec=quant.activation, decoder_spec=quant.last_layer.weight,
                                  quantize_gates=quantize_gates)


def lstm_lm(*, input_shape=None, num_classes, quant=None, hidden=(300,), embed_dim=None, width_mult=1.0,
            dropout_hidden=0.5, quantize_gates=False) -> RecurrentLanguageModel:
    """``num_classes`` is the vocabulary size; ``input_shape`` (the BPTT length) is not needed.
    ``quant``: the scheme (default: QNN's 4-bit qnn_linear weights and hidden state, float decoder)."""
    return _language_model("lstm", num_classes=num_classes, quant=quant, hidden=hidden, embed_dim=embed_dim,
                           width_mult=width_mult, dropout_hidden=dropout_hidden, quantize_gates=quantize_gates)


def gru_lm(*, input_shape=None, num_classes, quant=None, hidden=(300,), embed_dim=None, width_mult=1.0,
           dropout_hidden=0.5, quantize_gates=False) -> RecurrentLanguageModel:
    """As :func:`lstm_lm`, with GRU cells."""
    return _language_model("gru", num_classes=num_classes, quant=quant, hidden=hidden, embed_dim=embed_dim,
                           width_mult=width_mult, dropout_hidden=dropout_hidden, quantize_gates=quantize_gates)


def rnn_lm(*, input_shape=None, num_classes, quant=None, hidden=(300,), embed_dim=None, width_mult=1.0,
           dropout_hidden=0.5, quantize_gates=False) -> RecurrentLanguageModel:
    """As :func:`lstm_lm`, with Elman (tanh) cells; ``quantize_gates`` has nothing to act on."""
    return _language_model("rnn", num_classes=num_classes, quant=quant, hidden=hidden, embed_dim=embed_dim,
                           width_mult=width_mult, dropout_hidden=dropout_hidden, quantize_gates=quantize_gates)
