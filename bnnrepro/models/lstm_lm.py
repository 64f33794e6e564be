"""Quantized LSTM word-level language model for Penn Treebank (QNN §b.2/b.4: "comparable accuracy
as their 32-bit counterparts using only 4-bits").

Embedding -> dropout -> ``layers`` x QuantLSTM -> dropout -> Linear decoder, on (T, B) token tensors.
The paper's sizes, optimizer and exactly what it quantizes are [U]; the choices here:

* the LSTM weights (W_ih, W_hh) go through the scheme's ``weight`` quantizer; the embedding stays
  float and the decoder is the scheme's ``last_layer.weight`` (float in the preset:
  ``quant.last_layer=float``, as the first and last layers of QNN's ConvNets);
* the hidden state h_t (the input of every recurrent and layer-to-layer product) goes through
  the scheme's ``activation`` quantizer; h = o * tanh(c) lies in (-1, 1), the qnn_linear grid. The cell state stays
  float. ``quantize_gates=True`` also quantizes i, f, g, o after their nonlinearities;
* weight quantizers whose grid takes a scale (``takes_scale``: qnn_linear, qnn_log) get
  ``scale = AP2(1/sqrt(hidden))`` unless ``quant.weight_kwargs`` sets one,
  so the fixed-point grid covers the weights' init range U(-1/sqrt(H), 1/sqrt(H)) instead of [-1, 1)
  (where 4-bit steps of 1/8 would round almost every weight to 0);
* sizes default to one layer of 300 units, embedding 300, dropout 0.5 (all [U]);
* the LSTM is not a ``QuantLayer``: its latent weights are neither clipped by
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

# the scheme lstm_lm builds with when given none (conf/experiment/qnn_ptb_lstm.yaml's)
DEFAULT_QUANT = {"weight": "qnn_linear", "w_bits": 4, "activation": "qnn_linear", "a_bits": 4, "last_layer": "float"}


class QuantLSTM(nn.Module):
    """One LSTM layer whose weights and hidden state pass through quantizers (gate order i, f, g, o)."""

    def __init__(self, input_size: int, hidden_size: int, *, weight_quantizer=None, act_quantizer=None,
                 quantize_gates: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.weight_quantizer = _quantizer(weight_quantizer)
        self.act_quantizer = _quantizer(act_quantizer)
        self.quantize_gates = quantize_gates
        bound = 1.0 / math.sqrt(hidden_size)
        for p in (self.weight_ih, self.weight_hh, self.bias):
            nn.init.uniform_(p, -bound, bound)  # torch.nn.LSTM's init

    def forward(self, x, state=None):
        steps, batch, _ = x.shape
        if state is None:
            zeros = x.new_zeros(batch, self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        w_hh = self.weight_quantizer(self.weight_hh)
        x_proj = F.linear(x, self.weight_quantizer(self.weight_ih), self.bias)
        q = self.act_quantizer
        outputs = []
        for t in range(steps):
            i, f, g, o = (x_proj[t] + F.linear(h, w_hh)).chunk(4, dim=1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            if self.quantize_gates:
                i, f, g, o = q(i), q(f), q(g), q(o)
            c = f * c + i * g
            h = q(o * torch.tanh(c))
            outputs.append(h)
        return torch.stack(outputs), (h, c)


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int, dropout: float,
                 weight_spec, act_spec, decoder_spec, quantize_gates: bool):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        self.drop = nn.Dropout(dropout)
        self.lstms = nn.ModuleList(
            QuantLSTM(embed_dim if i == 0 else hidden, hidden, weight_quantizer=weight_spec,
                      act_quantizer=act_spec, quantize_gates=quantize_gates)
            for i in range(layers))
        self.decoder = QuantLinear(hidden, vocab_size, bias=True, weight_quantizer=decoder_spec, init="torch")

    def forward(self, tokens: torch.Tensor, state=None):
        """tokens (T, B) -> logits (T, B, vocab), new state (a list of (h, c) per layer; detach it
        between truncated-BPTT segments)."""
        x = self.drop(self.embedding(tokens))
        new_state = []
        for i, lstm in enumerate(self.lstms):
            x, s = lstm(x, None if state is None else state[i])
            x = self.drop(x)
            new_state.append(s)
        return self.decoder(x), new_state


def lstm_lm(*, input_shape=None, num_classes, quant=None, embed_dim=300, hidden=300, layers=1, dropout=0.5,
            quantize_gates=False) -> LSTMLanguageModel:
    """``num_classes`` is the vocabulary size; ``input_shape`` (the BPTT length) is not needed.
    ``quant``: the scheme (default: QNN's 4-bit qnn_linear weights and hidden state, float decoder)."""
    quant = scheme(quant, DEFAULT_QUANT)
    weight = quant.weight
    if weight.cls.takes_scale and "scale" not in weight.kwargs:
        weight = weight.updated(scale=2.0 ** round(math.log2(1.0 / math.sqrt(hidden))))
    return LSTMLanguageModel(
        num_classes, embed_dim, hidden, layers, dropout, weight_spec=weight, act_spec=quant.activation,
        decoder_spec=quant.last_layer.weight, quantize_gates=quantize_gates)
