"""Optimizers with torch.optim's update rules, over the parameters and gradients of one
or several modules (anything with `parameters()` and `grads`: layers, Linear,
Sequential). `step()` updates the live parameter arrays in place from the gradients
accumulated by `backward`; `zero_grad()` clears those gradients.

`state_dict()` / `load_state_dict(state)` save and restore an optimizer as torch.optim
does, except that parameters are named rather than numbered: the module's own names for
one module, "<index>.<name>" for a list of several (the numbering of a Sequential).
`rebind(modules)` moves an optimizer, state and all, onto other modules of the same
structure (a model rebuilt from a checkpoint)."""
from __future__ import annotations

from typing import Any, Sequence
import math
import numbers
from collections.abc import Mapping

import numpy as np

from ..core import validate
from ..core.docs import filled
from ..core.module import call_repr, indent

__all__ = ["SGD", "Adam"]

# The entries the optimizers' docstrings share, filled in by `filled(_DOCS)`
_DOCS = {
    'modules': 'modules : module or list of modules\n        Anything with parameters() and grads (a layer, Linear, Sequential); several\n'
               '        name their parameters "<index>.<name>".',
    'lr': 'lr : float >= 0\n        The learning rate.',
    'weight_decay': 'weight_decay : float >= 0, default 0.0\n        L2 penalty, weight_decay * p added to the gradient.',
    'raises': 'Raises\n    ------\n    ValueError, TypeError\n        A hyper-parameter out of range, or a module without parameters() and grads,\n'
              '        naming the argument.',
}


def _number(name, value, minimum=0.0, below=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < minimum or (below is not None and value >= below):
        bounds = f">= {minimum}" + (f" and < {below}" if below is not None else "")
        raise ValueError(f"{name}: expected a finite number {bounds}, got {value!r}")
    return float(value)


def _count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return int(value)


def _bound(modules):
    """(modules as a list, parameter names, (parameter, gradient) pairs) of a module or a
    list of modules."""
    if not isinstance(modules, (list, tuple)):
        modules = [modules]
    if not modules:
        raise ValueError("modules: expected a module or a non-empty list of modules, got an empty list")
    names, pairs = [], []
    for i, module in enumerate(modules):
        if not (hasattr(module, "parameters") and isinstance(getattr(module, "grads", None), dict)):
            raise TypeError(f"modules[{i}]: expected an object with parameters() and grads, "
                            f"got {type(module).__name__}")
        grads = module.grads
        for name, param in module.parameters().items():
            pairs.append((param, grads[name]))
            # several modules may each have a "weight": the index keeps the names apart
            names.append(f"{i}.{name}" if len(modules) > 1 else name)
    return list(modules), names, pairs


class _Optimizer:
    # the constructor's hyper-parameters, in order; the entries of a parameter's state once
    # it has been stepped; and those of them kept only while a hyper-parameter is true
    _hyper_names: tuple[str, ...] = ()
    _state_keys: tuple[str, ...] = ()
    _conditional_keys: dict[str, str] = {}

    def __init__(self, modules, **hyperparameters):
        self._modules, self._names, self._pairs = _bound(modules)
        self.__dict__.update(self._checked(**hyperparameters))
        self.state = [{} for _ in self._pairs]
        self.steps = 0

    def rebind(self, modules: Any) -> _Optimizer:
        """Step the parameters of `modules` (a module or a list, as the constructor takes)
        from now on, keeping every hyper-parameter and buffer: for a model rebuilt from a
        checkpoint (rnncore.load does this) or a copy of the model. Parameters are matched
        by name; the new ones must have the same names, shapes and dtypes as the current
        ones, else ValueError, listing every difference, and nothing changes.

        Parameters
        ----------
        modules : module or list of modules
            As the constructor takes, with the same parameter names, shapes and dtypes.

        Returns
        -------
        optimizer
            self.

        Raises
        ------
        ValueError
            A parameter missing, unexpected, or of another shape or dtype.
        TypeError
            A module without parameters() and grads.
        """
        new_modules, names, pairs = _bound(modules)
        by_name = dict(zip(names, pairs))
        listed = {"parameters missing": [n for n in self._names if n not in by_name],
                  "unexpected parameters": [n for n in names if n not in self._names]}
        problems = [f"{what} {found}" for what, found in listed.items() if found]
        for name, (param, _) in zip(self._names, self._pairs):
            new = by_name[name][0] if name in by_name else param
            if new.shape != param.shape or new.dtype != param.dtype:
                problems.append(f"{name}: expected {param.dtype}{param.shape}, got {new.dtype}{new.shape}")
        if problems:
            raise ValueError(f"{type(self).__name__}.rebind: modules: expected parameters of the names, shapes and "
                             f"dtypes of those it steps, got " + "; ".join(problems))
        # in the optimizer's own order, which its state follows
        self._modules, self._pairs = new_modules, [by_name[name] for name in self._names]
        return self

    def __repr__(self):
        modules = self._modules[0] if len(self._modules) == 1 else self._modules
        return call_repr(self, self._hyperparameters(), leading=[indent(repr(modules))])

    def zero_grad(self) -> None:
        """Set the gradient of every parameter stepped to zero, in place."""
        for _, grad in self._pairs:
            grad.fill(0)

    def step(self) -> None:
        """One update of every parameter from its current gradient."""
        self.steps += 1
        for (param, grad), state in zip(self._pairs, self.state):
            self._update(param, grad, state)

    def _hyperparameters(self):
        return {name: getattr(self, name) for name in self._hyper_names}

    def state_dict(self) -> dict[str, Any]:
        """{"type", "steps", "param_groups": [hyper-parameters and "params" (the names)],
        "state": {name: that parameter's buffers}}, every array a copy.

        Returns
        -------
        state_dict : dict
        """
        group = {**self._hyperparameters(), "params": list(self._names)}
        state = {name: {key: value.copy() if isinstance(value, np.ndarray) else value
                        for key, value in entries.items()}
                 for name, entries in zip(self._names, self.state) if entries}
        return {"type": type(self).__name__, "steps": self.steps, "param_groups": [group], "state": state}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what state_dict() returned (copying its arrays), so that stepping goes on
        exactly as it would have from the saved optimizer. Missing or unexpected names raise
        KeyError, wrong types, shapes or values ValueError, each listing every problem; on
        error nothing is changed.

        Parameters
        ----------
        state_dict : mapping
            What state_dict() returned, from an optimizer of this type over parameters of
            the same names.

        Raises
        ------
        KeyError
            Missing or unexpected names.
        ValueError, TypeError
            Wrong types, shapes or values.
        """
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{where}: expected a mapping from state_dict(), got {type(state_dict).__name__}")
        missing = [key for key in ("type", "steps", "param_groups", "state") if key not in state_dict]
        if missing:
            raise KeyError(f"{where}: the state lacks {missing}")
        groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if state_dict["type"] != type(self).__name__:
            raise ValueError(f"{where}: the state is of a {state_dict['type']!r} optimizer, not a "
                             f"{type(self).__name__!r}")
        if not isinstance(groups, (list, tuple)) or len(groups) != 1 or not isinstance(groups[0], Mapping) \
                or not isinstance(saved_state, Mapping):
            raise ValueError(f"{where}: expected one parameter group (a mapping) and a mapping of state, got "
                             f"param_groups {groups!r}")
        group = dict(groups[0])
        names = list(group.pop("params", []))
        listed = {
            "parameters missing": [n for n in self._names if n not in names],
            "unexpected parameters": [n for n in names if n not in self._names],
            "hyper-parameters missing": [h for h in self._hyper_names if h not in group],
            "unexpected hyper-parameters": [h for h in group if h not in self._hyper_names],
            "state for unknown parameters": [n for n in saved_state if n not in self._names],
        }
        if any(listed.values()):
            raise KeyError(f"{where}: " + "; ".join(f"{what} {found}" for what, found in listed.items() if found))

        problems = []
        try:
            hyperparameters = self._checked(**group)
        except ValueError as exc:
            problems.append(str(exc))
            hyperparameters = None
        try:
            steps = _count("steps", state_dict["steps"])
        except ValueError as exc:
            problems.append(str(exc))
        # which conditional entries to expect follows the saved hyper-parameters, even
        # when another of them is invalid, so that every problem is listed at once
        flags = hyperparameters or group
        expected_keys = sorted(k for k in self._state_keys
                               if k not in self._conditional_keys or flags[self._conditional_keys[k]])
        state = []
        for name, (param, _) in zip(self._names, self._pairs):
            given = saved_state.get(name) or {}
            if not isinstance(given, Mapping) or (given and sorted(map(str, given)) != expected_keys):
                problems.append(f"{name}: expected state entries {expected_keys} (or none), got "
                                f"{sorted(map(str, given)) if isinstance(given, Mapping) else given!r}")
                continue
            entries = {}
            for key, value in given.items():
                if key == "step":
                    try:
                        entries[key] = _count(f"{name}.step", value)
                    except ValueError as exc:
                        problems.append(str(exc))
                    continue
                array = validate.to_numpy(value, f"{name}.{key}")
                if array.shape != param.shape or array.dtype.kind not in "fiu":
                    problems.append(f"{name}.{key}: expected a numeric array of shape {param.shape}, got "
                                    f"{array.dtype}{array.shape}")
                    continue
                # a copy, so that the caller's arrays and ours never alias; in the
                # parameter's dtype, as torch casts state to its parameter's
                entries[key] = np.array(array, dtype=param.dtype, copy=True)
            state.append(entries)
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))
        self.__dict__.update(hyperparameters)
        self.steps = steps
        self.state = state


@filled(_DOCS)
class SGD(_Optimizer):
    """Stochastic gradient descent as torch.optim.SGD:
    g = grad + weight_decay * p; b = momentum * b + (1 - dampening) * g (b = g at the
    first step); g = g + momentum * b if nesterov else b; p -= lr * g.

    Parameters
    ----------
    %(modules)s
    %(lr)s
    momentum : float >= 0, default 0.0
    dampening : float >= 0, default 0.0
    %(weight_decay)s
    nesterov : bool, default False
        Nesterov momentum; needs momentum > 0 and dampening == 0.

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> linear = rc.Linear(2, 1, bias=False, seed=0)
    >>> linear.parameters()["weight"][...] = 1.0
    >>> opt = rc.optim.SGD(linear, lr=0.5)
    >>> linear.grads["weight"][...] = 1.0
    >>> opt.step()
    >>> linear.parameters()["weight"]
    array([[0.5, 0.5]], dtype=float32)
    >>> opt.zero_grad()
    """

    _hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _state_keys = ("momentum_buffer",)

    def __init__(self, modules: Any, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(modules, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)

    @staticmethod
    def _checked(lr, momentum, dampening, weight_decay, nesterov):
        values = {"lr": _number("lr", lr), "momentum": _number("momentum", momentum),
                  "dampening": _number("dampening", dampening),
                  "weight_decay": _number("weight_decay", weight_decay),
                  "nesterov": validate.flag("nesterov", nesterov)}
        if values["nesterov"] and (values["momentum"] == 0 or values["dampening"] != 0):
            raise ValueError(f"nesterov: expected momentum > 0 and dampening == 0, got momentum "
                             f"{values['momentum']}, dampening {values['dampening']}")
        return values

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


@filled(_DOCS)
class Adam(_Optimizer):
    """Adam as torch.optim.Adam (L2 weight decay added to the gradient, bias-corrected
    moments, eps added after the square root; amsgrad keeps the running maximum of the
    second moment).

    Parameters
    ----------
    %(modules)s
    lr : float >= 0, default 1e-3
        The learning rate.
    betas : pair of float in [0, 1), default (0.9, 0.999)
        Decay rates of the first and second moments.
    eps : float >= 0, default 1e-8
        Added to the denominator.
    %(weight_decay)s
    amsgrad : bool, default False
        Whether to use the running maximum of the second moment.

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> linear = rc.Linear(2, 1, bias=False, seed=0)
    >>> linear.parameters()["weight"][...] = 1.0
    >>> opt = rc.optim.Adam(linear, lr=0.1)
    >>> linear.grads["weight"][...] = 3.0
    >>> opt.step()  # the first step moves each weight by about lr
    >>> np.round(linear.parameters()["weight"], 4)
    array([[0.9, 0.9]], dtype=float32)
    >>> sorted(opt.state_dict())
    ['param_groups', 'state', 'steps', 'type']
    """

    _hyper_names = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _state_keys = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _conditional_keys = {"max_exp_avg_sq": "amsgrad"}

    def __init__(self, modules: Any, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(modules, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    @staticmethod
    def _checked(lr, betas, eps, weight_decay, amsgrad):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair of numbers in [0, 1), got {betas!r}")
        return {"lr": _number("lr", lr),
                "betas": (_number("betas[0]", betas[0], below=1.0), _number("betas[1]", betas[1], below=1.0)),
                "eps": _number("eps", eps), "weight_decay": _number("weight_decay", weight_decay),
                "amsgrad": validate.flag("amsgrad", amsgrad)}

    def _update(self, param, grad, state):
        beta1, beta2 = self.betas
        g = grad + param * self.weight_decay if self.weight_decay else grad
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(param)
        # counted per parameter, as torch does, so that a restored state carries its own
        # bias correction whatever the optimizer's step() count
        state["step"] += 1
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg *= beta1
        exp_avg += (1 - beta1) * g
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            exp_avg_sq = state["max_exp_avg_sq"]
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** state["step"])
        # the order of torch's single-tensor Adam: denominator first, then one scaled step
        denom = np.sqrt(exp_avg_sq) / param.dtype.type(bias_correction2_sqrt) + param.dtype.type(self.eps)
        param -= param.dtype.type(self.lr / bias_correction1) * (exp_avg / denom)
