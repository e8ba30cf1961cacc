"""Backend-specific code, all of it: compiling the solver and running its loop.

Everything else in the package is written in `keras.ops` and runs on every Keras
backend. What differs per backend is how a function with a data-dependent loop is
made fast:

- TensorFlow: `tf.function(jit_compile=True)`: one XLA cluster, also inside a graph
  that is not compiled with XLA.
- JAX: `jax.jit`, inlined when called inside a traced function.
- PyTorch: `torch.compile` (Inductor), with the loop as `torch.while_loop`, so that
  the whole loop runs as compiled code instead of a Python loop that dispatches every
  op of every step (Keras's `ops.while_loop` on torch). Inductor fuses a loop step into
  one C++ kernel.

Nothing here uses `functools.cache`/`lru_cache` (Dynamo warns when it meets them): the
compiled functions are kept in plain dicts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

__all__ = ["compiled", "on_accelerator", "outside_torch_compile", "replica_sum", "while_loop"]

Tensor = Any


class compiled:  # used like a decorator, hence the lower case
    """`fn` compiled for the active backend, built on the first call.

    - TensorFlow: `tf.function(jit_compile=True)`, once per input shape; inside a graph
      that is not compiled with XLA it still runs as one XLA cluster.
    - JAX: `jax.jit`, once per input shape; inlined inside a traced function.
    - PyTorch: `torch.compile` (Inductor), once per input shape, its loops as
      `torch.while_loop` (see `while_loop`). Inside another `torch.compile`d function
      it is left out of the surrounding graph (`torch._dynamo.disable`) and calls its
      own compiled version. After Dynamo's recompile limit (8 shapes by default) new
      shapes run eagerly; `torch.compiler.set_stance("force_eager")` runs every call
      eagerly (no compile time).

    Args:
        fn: A function of tensors written with `keras.ops`.
    """

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn
        self._compiled: dict[str, Callable[..., Tensor]] = {}
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "compiled")

    def __call__(self, *args: Tensor) -> Tensor:
        backend = keras.backend.backend()
        if backend == "torch":
            return _torch_call(self, args)
        function = self._compiled.get(backend)
        if function is None:
            function = self._compiled[backend] = _compile(self.fn, backend)
        return function(*args)


def _compile(fn: Callable[..., Tensor], backend: str) -> Callable[..., Tensor]:
    if backend == "tensorflow":
        import tensorflow as tf

        compiled_fn: Callable[..., Tensor] = tf.function(fn, jit_compile=True, autograph=False)
        return compiled_fn
    if backend == "jax":
        import jax

        jitted: Callable[..., Tensor] = jax.jit(fn)
        return jitted
    if backend == "torch":
        import torch

        # One thread in the generated C++ (no OpenMP regions): a loop step is a small
        # kernel, and a parallel region per step costs more than it saves, far more
        # when the cores are busy (measured 4970 ms against 84 ms per call at
        # (16, 100, 100) on a loaded 2-core CPU).
        options: dict[str, Any] = {"cpp.threads": 1}
        torch_compiled: Callable[..., Tensor] = torch.compile(fn, dynamic=False, options=options)
        return torch_compiled
    return fn


def _torch_call(function: compiled, args: tuple[Tensor, ...]) -> Tensor:
    import torch

    if torch.compiler.is_compiling():
        # Inside a compiled function (a model with `jit_compile=True`): Dynamo leaves the
        # function out of the surrounding graph and calls its own compiled version.
        standalone = _TORCH_HELPERS.get("standalone")
        if standalone is None:
            standalone = _TORCH_HELPERS["standalone"] = torch._dynamo.disable(_torch_standalone)
        return standalone(function, args)
    return _torch_standalone(function, args)


_TORCH_HELPERS: dict[Any, Callable[..., Any]] = {}


def _torch_standalone(function: compiled, args: tuple[Tensor, ...]) -> Tensor:
    compiled_fn = function._compiled.get("torch")
    if compiled_fn is None:
        compiled_fn = function._compiled["torch"] = _compile(function.fn, "torch")
    return compiled_fn(*args)


def on_accelerator(x: Tensor | None = None) -> bool:
    """Whether computations on `x` run on a GPU or TPU.

    - JAX: the default backend is not the CPU.
    - TensorFlow: a logical GPU or TPU device exists.
    - PyTorch: `x` lives on a device other than the CPU (a CUDA tensor; also inside
      `torch.compile`, where `x` is a fake tensor with its device); without `x`, whether
      CUDA is available (Keras then puts new tensors there).

    Args:
        x: A tensor the computation takes, or None.

    Returns:
        A Python bool.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return bool(jax.default_backend() != "cpu")
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    if backend == "torch":
        import torch

        if isinstance(x, torch.Tensor):
            return bool(x.device.type != "cpu")
        return bool(torch.cuda.is_available())
    return False


def outside_torch_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """On PyTorch, `fn` runs outside the graphs of `torch.compile`; unchanged elsewhere.

    For the loss under `model.compile(jit_compile=True)`: Dynamo then does not trace the
    loss (Keras's box utilities and the cost combinations break its graphs into many
    small ones) and the solver inside runs its own compiled version. The first training
    step compiles faster and the steps run faster than with the loss traced.

    Args:
        fn: The function (or method) to keep out.

    Returns:
        A function with the signature of `fn`.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if keras.backend.backend() == "torch":
            import torch

            if torch.compiler.is_compiling():
                disabled = _TORCH_HELPERS.get(fn)
                if disabled is None:
                    disabled = _TORCH_HELPERS[fn] = torch._dynamo.disable(fn)
                return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def while_loop(
    cond: Callable[[Any], Tensor],
    body: Callable[[Any], Any],
    state: Any,
    maximum_iterations: int,
) -> Any:
    """`keras.ops.while_loop` on one nested state, with a loop that compiles on torch.

    On PyTorch, inside `torch.compile`, the loop becomes `torch.while_loop`: one
    compiled loop, with the step counter that enforces `maximum_iterations` carried in
    the state. Elsewhere it is `keras.ops.while_loop`.

    Args:
        cond: `cond(state) -> bool scalar tensor`.
        body: `body(state) -> state`, of the same structure, shapes and dtypes.
        state: A nested structure (dicts, lists, tuples) of tensors.
        maximum_iterations: The most steps the loop takes.

    Returns:
        The final state.
    """
    if keras.backend.backend() == "torch":
        import torch

        if torch.compiler.is_compiling():
            return _torch_while_loop(cond, body, state, maximum_iterations)
    return ops.while_loop(cond, body, state, maximum_iterations=maximum_iterations)


def _torch_while_loop(
    cond: Callable[[Any], Tensor],
    body: Callable[[Any], Any],
    state: Any,
    maximum_iterations: int,
) -> Any:
    import torch
    from torch._higher_order_ops.while_loop import while_loop as torch_while_loop

    # Carried tensors may not alias each other (a state may hold one tensor twice).
    flat = [torch.clone(value) for value in keras.tree.flatten(state)]
    step = torch.zeros((), dtype=torch.int64, device=flat[0].device)

    def flat_cond(step: Tensor, *values: Tensor) -> Tensor:
        running = cond(keras.tree.pack_sequence_as(state, list(values)))
        return torch.logical_and(running, step < maximum_iterations)

    def flat_body(step: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
        new = keras.tree.flatten(body(keras.tree.pack_sequence_as(state, list(values))))
        return (step + 1, *(torch.clone(value) for value in new))

    _, *final = torch_while_loop(flat_cond, flat_body, (step, *flat))
    return keras.tree.pack_sequence_as(state, final)


def replica_sum(total: Tensor) -> Tensor:
    """A count summed over this replica's batch, made the sum over all replicas.

    Under a `tf.distribute` strategy with several replicas in sync: the all-reduced sum.
    Keras adds the replicas' gradients (and scales a mean-reduced loss by one over the
    number of replicas), so dividing each replica's sum by the global total gives the
    gradients of one device with the whole batch. (DETR divides by the mean over
    replicas instead, because PyTorch's DDP averages the gradients: the same result.)
    Elsewhere (one replica; JAX, whose batch is global under data parallelism; PyTorch)
    the count itself.

    Args:
        total: Scalar tensor.

    Returns:
        Scalar tensor.
    """
    if keras.backend.backend() != "tensorflow":
        return total
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return total
    return context.all_reduce("sum", total)
