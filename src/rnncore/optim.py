"""Optimizers with torch.optim's update rules, over the parameters and gradients of one
or several modules (anything with `parameters()` and `grads`: layers, Linear,
Sequential). `step()` updates the live parameter arrays in place from the gradients
accumulated by `backward`; `zero_grad()` clears those gradients."""
import math
import numbers

import numpy as np

__all__ = ["SGD", "Adam"]


def _number(name, value, minimum=0.0, below=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < minimum or (below is not None and value >= below):
        bounds = f">= {minimum}" + (f" and < {below}" if below is not None else "")
        raise ValueError(f"{name}: expected a finite number {bounds}, got {value!r}")
    return float(value)


class _Optimizer:
    def __init__(self, modules, lr):
        if not isinstance(modules, (list, tuple)):
            modules = [modules]
        if not modules:
            raise ValueError("modules: expected a module or a non-empty list of modules, got an empty list")
        self._pairs = []
        for i, module in enumerate(modules):
            if not (hasattr(module, "parameters") and isinstance(getattr(module, "grads", None), dict)):
                raise TypeError(f"modules[{i}]: expected an object with parameters() and grads, "
                                f"got {type(module).__name__}")
            grads = module.grads
            self._pairs += [(param, grads[name]) for name, param in module.parameters().items()]
        self._modules = list(modules)
        self.lr = _number("lr", lr)
        self.state = [{} for _ in self._pairs]
        self.steps = 0

    def zero_grad(self):
        for _, grad in self._pairs:
            grad.fill(0)

    def step(self):
        """One update of every parameter from its current gradient."""
        self.steps += 1
        for (param, grad), state in zip(self._pairs, self.state):
            self._update(param, grad, state)


class SGD(_Optimizer):
    """Stochastic gradient descent as torch.optim.SGD:
    g = grad + weight_decay * p; b = momentum * b + (1 - dampening) * g (b = g at the
    first step); g = g + momentum * b if nesterov else b; p -= lr * g."""

    def __init__(self, modules, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(modules, lr)
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov: expected momentum > 0 and dampening == 0, got momentum "
                             f"{self.momentum}, dampening {self.dampening}")

    def _update(self, param, grad, state):
        g = grad + param * self.weight_decay if self.weight_decay else grad
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        param -= param.dtype.type(self.lr) * g


class Adam(_Optimizer):
    """Adam as torch.optim.Adam (L2 weight decay added to the gradient, bias-corrected
    moments, eps added after the square root; amsgrad keeps the running maximum of the
    second moment)."""

    def __init__(self, modules, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(modules, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair of numbers in [0, 1), got {betas!r}")
        self.betas = (_number("betas[0]", betas[0], below=1.0), _number("betas[1]", betas[1], below=1.0))
        self.eps = _number("eps", eps)
        self.weight_decay = _number("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def _update(self, param, grad, state):
        beta1, beta2 = self.betas
        g = grad + param * self.weight_decay if self.weight_decay else grad
        if not state:
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(param)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg *= beta1
        exp_avg += (1 - beta1) * g
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            exp_avg_sq = state["max_exp_avg_sq"]
        bias_correction1 = 1 - beta1 ** self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** self.steps)
        # the order of torch's single-tensor Adam: denominator first, then one scaled step
        denom = np.sqrt(exp_avg_sq) / param.dtype.type(bias_correction2_sqrt) + param.dtype.type(self.eps)
        param -= param.dtype.type(self.lr / bias_correction1) * (exp_avg / denom)
