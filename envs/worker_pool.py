"""B gymnasium envs stepped by W worker processes: what ``GymTaskVectorEnv(vectorization="async")`` runs.

gymnasium's ``AsyncVectorEnv`` gives every env a process of its own, so 64 envs are 64 processes on
a 2-core machine. :class:`WorkerPoolVectorEnv` gives each of W processes a contiguous share of the B
envs (sizes differing by at most one), which it steps in a loop exactly as ``SyncVectorEnv`` does:
``SAME_STEP`` autoreset, the terminal observation and info in ``info["final_obs"]`` and
``info["final_info"]``, infos batched with gymnasium's ``_add_info`` in the order of the envs. The
same seeds and actions therefore give the same observations, rewards and infos as ``SyncVectorEnv``
for any W. One step is one message to each worker (its share's actions) and one reply (its share's
observations as one batch, rewards, flags and infos), over a ``multiprocessing`` pipe.

Guarantees:

- *Errors* raised by an env in a worker reach the caller as the same exception with the env's
  message (rebuilt from its pickle; where it cannot be, a ``RuntimeError`` with its type and message),
  with a note naming the global env index, the worker and the worker's traceback. Where envs of several
  workers fail in one call, the lowest env index wins, as in ``SyncVectorEnv``; the workers stay up, but
  (as in ``SyncVectorEnv``, where the envs after the failing one did not step) the envs are no longer in step.
- *Interrupted calls*: a call the caller leaves early (a signal handler's exception such as the
  trainer's step watchdog, Ctrl-C) leaves the workers' replies unread; every later call is refused and
  ``close()`` terminates the workers instead of asking them to finish.
- *Closing*: ``close()`` asks each worker to close its envs and exit (terminating one that has not
  within ``timeout`` seconds); ``close(terminate=True)`` terminates them at once, a worker stuck in a
  step included (SIGTERM, then SIGKILL). Either way every worker is joined: no zombies.
- *Start methods*: what builds the envs is pickled with ``cloudpickle`` in this process, whatever the
  ``multiprocessing`` start method, so fork, spawn and forkserver behave alike and an unpicklable
  ``env_fn`` is refused here with a ``TypeError`` naming it (:func:`check_picklable`).
- Workers ignore SIGINT: a Ctrl-C at the terminal reaches the whole process group, and this process
  decides what it means (the trainer stops after the current update and closes the envs).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import signal
import traceback
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

__all__ = ["WorkerPoolVectorEnv", "check_picklable", "default_workers", "resolve_workers", "shares"]

#: Seconds a worker that is stuck or slow to close gets after SIGTERM before SIGKILL.
KILL_AFTER = 2.0
_PICKLE_FIX = ("define it at module level (or as an object whose attributes pickle) and keep locks, open files, "
               "sockets and generators out of it; or use vectorization='sync', which runs the envs in this process")


def default_workers(num_envs: int) -> int:
    """W when none is given: one worker per CPU core (``os.cpu_count()``), at most one per env."""
    return max(1, min(num_envs, os.cpu_count() or 1))


def resolve_workers(num_workers: Any, num_envs: int) -> int:
    """The worker count for ``num_envs`` envs: ``num_workers`` (None: :func:`default_workers`).

    More workers than envs are clamped to ``num_envs``: a worker with no env would do nothing, and the same
    setting builds envs of several sizes (the trainer's one-env probe, its held-out env).

    Raises:
        TypeError: ``num_workers`` is not a whole number. ValueError: it is below 1.
    """
    if num_workers is None:
        return default_workers(num_envs)
    if not isinstance(num_workers, (int, np.integer)) or isinstance(num_workers, bool):
        raise TypeError(f"num_workers must be a whole number of worker processes, got {type(num_workers).__name__} "
                        f"{num_workers!r}; e.g. num_workers=2, or leave it out for one per CPU core.")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1 (worker processes), got {num_workers}; leave it out for one per "
                         "CPU core (at most one per env).")
    return min(int(num_workers), num_envs)


def shares(num_envs: int, num_workers: int) -> list[tuple[int, int]]:
    """Each worker's envs as ``(start, stop)``: contiguous, in order, sizes differing by at most one."""
    base, extra = divmod(num_envs, num_workers)
    bounds = list(itertools.accumulate((base + (w < extra) for w in range(num_workers)), initial=0))
    return list(itertools.pairwise(bounds))


def check_picklable(named: dict[str, Any]) -> None:
    """Each value pickles with ``cloudpickle``, as the worker processes need.

    Raises:
        TypeError: naming the first value that does not, why, and the fix.
    """
    for name, value in named.items():
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            raise TypeError(
                f"vectorization='async' runs the envs in worker processes, so {name} must be picklable, and "
                f"{name} = {value!r} is not ({type(exc).__name__}: {exc}). Fix: {_PICKLE_FIX}."
            ) from exc


class WorkerPoolVectorEnv(VectorEnv):
    """``len(env_fns)`` envs in ``num_workers`` worker processes, as a ``SAME_STEP`` gymnasium ``VectorEnv``
    with numpy observations (see the module docstring for what it guarantees).

    Args:
        env_fns: builds each env (picklable: each worker builds its share from a pickle of these).
        num_workers: W (None: :func:`default_workers`; more than ``len(env_fns)``: one per env).
        context: the ``multiprocessing`` start method (None: the platform's default).
        close_timeout: seconds a plain ``close()`` waits for the workers before terminating them.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}  # noqa: RUF012

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], num_workers: int | None = None, *,
                 context: str | None = None, close_timeout: float = 10.0) -> None:
        if not env_fns:
            raise ValueError("env_fns is empty: a WorkerPoolVectorEnv needs at least one env.")
        self.num_envs = len(env_fns)
        self.num_workers = resolve_workers(num_workers, self.num_envs)
        self.shares = shares(self.num_envs, self.num_workers)
        self.close_timeout = close_timeout
        payloads = [_pickled(list(env_fns[start:stop]), start) for start, stop in self.shares]
        ctx: Any = get_context(context)  # typeshed's BaseContext lacks Process
        self._conns: list[Connection] = []
        self._processes: list[Any] = []
        self._broken = ""  # why the workers' replies cannot be trusted (a call left early, a worker gone)
        try:
            for w, ((start, _), payload) in enumerate(zip(self.shares, payloads)):
                parent, child = ctx.Pipe()
                process = ctx.Process(target=_work, args=(child, payload, start, w), daemon=True,
                                      name=f"meta-rl env worker {w}")
                process.start()
                child.close()
                self._conns.append(parent)
                self._processes.append(process)
            self._set_spaces(self._gather("start", [None] * self.num_workers))
        except BaseException:
            self.close_extras(terminate=True)
            raise

    def _set_spaces(self, replies: list[tuple[spaces.Space[Any], spaces.Space[Any]]]) -> None:
        self.single_observation_space, self.single_action_space = replies[0]
        for (start, _), (obs_space, action_space) in zip(self.shares, replies):
            if obs_space != self.single_observation_space or action_space != self.single_action_space:
                raise RuntimeError(
                    f"env {start} has spaces {obs_space}, {action_space} but env 0 has {self.single_observation_space},"
                    f" {self.single_action_space}: every env must have the same observation and action spaces."
                )
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset every env (``seed=s``: env i with ``s + i``; a list: one seed per env), as ``SyncVectorEnv``."""
        if seed is None:
            seed = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seed = [int(seed) + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"a list of seeds needs one per env ({self.num_envs}), got {len(seed)}.")
        replies = self._gather("reset", [(seed[start:stop], options) for start, stop in self.shares])
        return self._join_obs([r[0] for r in replies]), self._infos([r[1] for r in replies])

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env with its row of ``actions``; an env whose episode ended is reset in the same step."""
        payloads: list[Any]
        if isinstance(actions, np.ndarray):  # Discrete and Box actions: each worker gets its rows, iterated there
            payloads = [actions[start:stop] for start, stop in self.shares]
        else:
            items = list(iterate(self.action_space, actions))
            payloads = [items[start:stop] for start, stop in self.shares]
        replies = self._gather("step", payloads)
        obs, rewards, terminated, truncated, infos = zip(*replies)
        return (self._join_obs(list(obs)), np.concatenate(rewards), np.concatenate(terminated),
                np.concatenate(truncated), self._infos(list(infos)))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call ``name`` (a method or attribute found by ``get_wrapper_attr``) on every env, as ``SyncVectorEnv``."""
        replies = self._gather("call", [(name, args, kwargs)] * self.num_workers)
        return tuple(itertools.chain.from_iterable(replies))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        return self.call(name)

    def close_extras(self, *, terminate: bool = False, timeout: float | None = None, **kwargs: Any) -> None:
        """Close the workers: ask them (unless ``terminate`` or a call was left early), then terminate any left."""
        polite = not terminate and not self._broken
        if polite:
            with contextlib.suppress(ConnectionError):
                for conn in self._conns:
                    conn.send(("close", None))
        wait = self.close_timeout if timeout is None else timeout
        for process, conn in zip(self._processes, self._conns):
            _stop(process, wait if polite else 0.0)
            conn.close()
        self._processes, self._conns = [], []

    def __del__(self) -> None:
        if getattr(self, "_processes", None) and not getattr(self, "closed", True):
            with contextlib.suppress(Exception):  # at interpreter exit, modules may already be gone
                self.close(terminate=True)

    # --- talking to the workers -----------------------------------------------------------
    def _gather(self, command: str, payloads: list[Any]) -> list[Any]:
        """Send ``command`` with one payload to each worker and return their results, in worker order.

        Raises:
            RuntimeError: a call was left early before, or a worker is gone. Any env error: see the module.
        """
        if self._broken:
            raise RuntimeError(f"{self._broken}, so the workers' state is unknown: close() this env (it terminates "
                               "them) and build a new one.")
        self._broken = f"a {command}() of the env workers was left before they all replied"
        for w, (conn, payload) in enumerate(zip(self._conns, payloads)):
            if command != "start":
                self._send(w, conn, (command, payload))
        replies = [self._receive(w, command) for w in range(self.num_workers)]
        self._broken = ""
        failures = [data for status, data in replies if status == "error"]
        if failures:
            raise self._rebuild(min(failures, key=lambda f: f[0]))
        return [data for _, data in replies]

    def _send(self, w: int, conn: Connection, message: tuple[str, Any]) -> None:
        try:
            conn.send(message)
        except ConnectionError as exc:  # not OSError: a signal handler's TimeoutError is one, and is the caller's
            raise self._gone(w, message[0]) from exc

    def _receive(self, w: int, command: str) -> tuple[str, Any]:
        try:
            return self._conns[w].recv()
        except (EOFError, ConnectionError) as exc:
            raise self._gone(w, command) from exc

    def _gone(self, w: int, command: str) -> RuntimeError:
        process, (start, stop) = self._processes[w], self.shares[w]
        process.join(KILL_AFTER)
        self._broken = f"env worker {w} (envs {start}..{stop - 1}) ended"
        return RuntimeError(
            f"env worker {w} (envs {start}..{stop - 1}, pid {process.pid}) ended during {command}() with exit code "
            f"{process.exitcode}: an env crashed its process (a segfault, os._exit, sys.exit) or it was killed; its "
            "output above may say more."
        )

    def _rebuild(self, failure: tuple[int, int, bytes | None, str, str, str]) -> BaseException:
        """The exception a worker reported, as raised there, with a note naming where."""
        index, w, blob, kind, message, trace = failure
        exc: Any = None
        if blob is not None:
            with contextlib.suppress(Exception):
                exc = pickle.loads(blob)
        if not isinstance(exc, BaseException):
            exc = RuntimeError(f"{kind}: {message}")
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"Raised by env {index} in env worker {w} (pid {self._processes[w].pid}); there:\n{trace}")
        return exc

    # --- assembling the batch ---------------------------------------------------------------
    def _join_obs(self, parts: list[Any]) -> Any:
        return parts[0] if len(parts) == 1 else _join(self.single_observation_space, parts)

    def _infos(self, per_worker: list[list[tuple[dict[str, Any] | None, dict[str, Any]]]]) -> dict[str, Any]:
        """The envs' infos batched as ``SyncVectorEnv`` batches them (``_add_info``, env by env, in order)."""
        infos: dict[str, Any] = {}
        for (start, _), share in zip(self.shares, per_worker):
            for j, (final, info) in enumerate(share):
                if final is not None:
                    infos = self._add_info(infos, final, start + j)
                infos = self._add_info(infos, info, start + j)
        return infos


def _join(space: spaces.Space[Any], parts: list[Any]) -> Any:
    """The workers' batches of ``space`` as one batch, in order."""
    if isinstance(space, spaces.Dict):
        return {key: _join(sub, [p[key] for p in parts]) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_join(sub, [p[i] for p in parts]) for i, sub in enumerate(space.spaces))
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    return tuple(itertools.chain.from_iterable(parts))


def _stop(process: Any, wait: float) -> None:
    """Join ``process`` within ``wait`` seconds, else terminate it (SIGTERM, then SIGKILL); always reaped."""
    process.join(wait)
    if process.is_alive():
        process.terminate()
        process.join(KILL_AFTER)
    if process.is_alive():
        process.kill()
        process.join()


def _pickled(env_fns: list[Callable[[], gym.Env]], start: int) -> bytes:
    try:
        return cloudpickle.dumps(env_fns)
    except Exception as exc:
        raise TypeError(
            f"vectorization='async' runs the envs in worker processes, so what builds env {start} must be picklable, "
            f"and {env_fns[0]!r} is not ({type(exc).__name__}: {exc}). Fix: {_PICKLE_FIX}."
        ) from exc


# --- the worker process ---------------------------------------------------------------------
class _Share:
    """One worker's envs ``start, start + 1, ...``, stepped one after another as ``SyncVectorEnv`` steps them."""

    def __init__(self, start: int) -> None:
        self.start = self.current = start  # current: the env being called, for error messages
        self.envs: list[gym.Env] = []

    def build(self, payload: bytes) -> tuple[spaces.Space[Any], spaces.Space[Any]]:
        for j, fn in enumerate(pickle.loads(payload)):
            self.current = self.start + j
            self.envs.append(fn())
        first = self.envs[0]
        for j, env in enumerate(self.envs):
            if env.observation_space != first.observation_space or env.action_space != first.action_space:
                self.current = self.start + j
                raise RuntimeError(f"env {self.current} has spaces {env.observation_space}, {env.action_space} but "
                                   f"env {self.start} has {first.observation_space}, {first.action_space}: every env "
                                   "must have the same observation and action spaces.")
        self.space = first.observation_space
        self.actions = batch_space(first.action_space, len(self.envs))
        return first.observation_space, first.action_space

    def run(self, command: str, data: Any) -> Any:
        if command == "step":
            return self.step(data)
        if command == "reset":
            return self.reset(*data)
        return self.call(*data)

    def reset(self, seeds: list[int | None], options: dict[str, Any] | None) -> tuple[Any, list[Any]]:
        obs, infos = [], []
        for j, (env, seed) in enumerate(zip(self.envs, seeds)):
            self.current = self.start + j
            observation, info = env.reset(seed=seed, options=options)
            obs.append(observation)
            infos.append((None, info))
        return self._batch(obs), infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, list[Any]]:
        """``actions``: the share's rows of the batched actions (as ``SyncVectorEnv`` iterates them), or a list."""
        if isinstance(actions, np.ndarray):
            actions = iterate(self.actions, actions)
        n = len(self.envs)
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_)
        obs, infos = [], []
        for j, (env, action) in enumerate(zip(self.envs, actions)):
            self.current = self.start + j
            observation, rewards[j], terminated[j], truncated[j], info = env.step(action)
            final = None
            if terminated[j] or truncated[j]:  # SAME_STEP: the next episode starts in this step
                final = {"final_obs": observation, "final_info": info}
                observation, info = env.reset()
            obs.append(observation)
            infos.append((final, info))
        return self._batch(obs), rewards, terminated, truncated, infos

    def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        results = []
        for j, env in enumerate(self.envs):
            self.current = self.start + j
            attr = env.get_wrapper_attr(name)
            results.append(attr(*args, **kwargs) if callable(attr) else attr)
        return results

    def close(self) -> None:
        for env in self.envs:
            with contextlib.suppress(Exception):
                env.close()

    def _batch(self, obs: list[Any]) -> Any:
        out: Any = create_empty_array(self.space, len(obs))
        return concatenate(self.space, obs, out)


def _failure(exc: BaseException, index: int, worker: int) -> tuple[int, int, bytes | None, str, str, str]:
    """What the main process needs to raise ``exc`` again: (env, worker, its pickle or None, type, message,
    traceback)."""
    try:
        blob: bytes | None = cloudpickle.dumps(exc)
    except Exception:
        blob = None
    return index, worker, blob, type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))


def _work(conn: Connection, payload: bytes, start: int, worker: int) -> None:
    """A worker process: build its envs, report their spaces, then serve calls until ``close`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() ends it, whatever handler a fork inherited
    share = _Share(start)
    try:
        conn.send(("ok", share.build(payload)))
    except Exception as exc:
        conn.send(("error", _failure(exc, share.current, worker)))
        share.close()
        return
    while True:
        try:
            command, data = conn.recv()
        except (EOFError, OSError):  # the main process is gone
            break
        if command == "close":
            break
        try:
            reply: tuple[str, Any] = ("ok", share.run(command, data))
        except Exception as exc:
            reply = ("error", _failure(exc, share.current, worker))
        if not _reply(conn, reply, command, share.start, worker):
            break
    share.close()


def _reply(conn: Connection, reply: tuple[str, Any], command: str, start: int, worker: int) -> bool:
    """Send ``reply``; one that does not pickle is reported as an error instead. False: the main process is gone."""
    try:
        conn.send(reply)
    except OSError:
        return False
    except Exception as exc:  # a result that does not pickle (send pickles before it writes)
        error = TypeError(f"the result of {command}() in env worker {worker} cannot be sent to the main process: "
                          f"{type(exc).__name__}: {exc}. Fix: return picklable observations and infos (numpy arrays, "
                          "numbers, strings, dicts of them).")
        try:
            conn.send(("error", _failure(error, start, worker)))
        except OSError:
            return False
    return True
