"""One scaffold for a fused op with a backward: its forward and backward implementations run as
``torch.library`` custom ops under ``torch.compile`` (fake implementations and registered autograd, so the graph
is traced through them) and as one ``torch.autograd.Function`` in eager mode, where a custom op costs about 70 µs
of host time per call (dispatch, schema and alias checks) and an autograd.Function about 10."""
from __future__ import annotations

import torch


class FusedOp:
    """``op(*inputs)``: the first output of ``forward(*inputs)``, differentiable.

    inputs: ``n_tensors`` tensors (None allowed), saved for the backward, then non-tensor arguments.
    forward(*inputs) → outputs: a tensor or a tuple of tensors, the first the op's result; all are saved unless
    ``save_outputs`` is False. backward(*saved, dy, *arguments) → ``result``; input_grads(tensors, result) → the
    gradients of the ``n_tensors`` tensor inputs. custom_ops: (forward_op, backward_op), the same implementations
    as ``torch.library.custom_op``s with fake implementations (the forward op returns the tuple of outputs, the
    backward op a tensor or tuple that input_grads reads too), or None for an op that torch.compile never reaches.
    """

    def __init__(self, forward, backward, n_tensors, input_grads, custom_ops=None, save_outputs=True):
        self.n_tensors, self.input_grads, self.save_outputs = n_tensors, input_grads, save_outputs
        self.forward_op = None
        if custom_ops is not None:
            self.forward_op, backward_op = custom_ops
            self.forward_op.register_autograd(self._backward_op(backward_op), setup_context=self._setup_context)
        self.function = self._function(forward, backward)

    def __call__(self, *inputs):
        if self.forward_op is not None and torch.compiler.is_compiling():
            return self.forward_op(*inputs)[0]
        return self.function.apply(*inputs)

    def save(self, ctx, inputs, outputs) -> None:
        n = self.n_tensors
        if not self.save_outputs:
            outputs = ()
        elif isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        ctx.save_for_backward(*inputs[:n], *outputs)
        ctx.args = inputs[n:]

    def grads(self, ctx, dy, backward) -> tuple:
        """The gradients of every input (None for the non-tensor arguments), by ``backward``."""
        saved = ctx.saved_tensors
        if dy is None:  # only reached with saved outputs: the result is the first of them
            dy = torch.zeros_like(saved[self.n_tensors])
        result = backward(*saved, dy, *ctx.args)
        return tuple(self.input_grads(saved[:self.n_tensors], result)) + (None,) * len(ctx.args)

    def _setup_context(self, ctx, inputs, output):
        self.save(ctx, inputs, output)

    def _backward_op(self, backward_op):
        def backward(ctx, dy, *_):
            return self.grads(ctx, dy, backward_op)
        return backward

    def _function(self, forward, backward):
        op = self

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                outputs = forward(*inputs)
                op.save(ctx, inputs, outputs)
                return outputs[0] if isinstance(outputs, tuple) else outputs

            @staticmethod
            def backward(ctx, dy):
                return op.grads(ctx, dy, backward)

        return Function
