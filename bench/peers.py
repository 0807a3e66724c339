#!/usr/bin/env python3
"""Training throughput of peer frameworks on carry's model.

Trains the same two-layer stateful LSTM as carry's trainer with
  * PyTorch on the CPU, one process            (engine "pytorch-cpu"),
  * PyTorch DDP over gloo, 2 local processes   (engine "pytorch-ddp-2"),
  * Keras 3 on the TensorFlow backend          (engine "keras"),
and reports sequences per second of training: B * timed steps / wall seconds
of those steps (forward, backward, optimizer step and state carry), after a
few untimed warm-up steps. Each measurement runs in fresh processes, so the
frameworks never share a process or a thread pool.

JSON goes to stdout (and --json-out), a table and loss checks to stderr.
An engine whose framework is not installed is reported as skipped.
"""
import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import socket
import sys
import time
import traceback

T, F = 96, 2                      # time steps per sequence, features in and out
LR, EPS, DROPOUT = 1e-3, 1e-7, 0.2
DATA_SEED = 1234
CONFIGS = {                       # batch B, hidden H, default timed steps
    "seed": {"batch": 10, "hidden": 8, "steps": 500},
    "large": {"batch": 64, "hidden": 64, "steps": 50},
}
ENGINES = ("torch", "ddp", "keras")
ENGINE_NAMES = {"torch": "pytorch-cpu", "ddp": "pytorch-ddp-2", "keras": "keras"}


def make_data(n, seed=DATA_SEED):
    """Seeded normal inputs; targets are a learnable causal function of them."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    y = np.empty_like(x)
    y[:, :, 0] = 0.5 * x[:, :, 0] + 0.3 * x[:, :, 1]
    y[:, 0, 1] = 0.0
    y[:, 1:, 1] = 0.8 * x[:, :-1, 0]                   # needs one step of memory
    y += 0.1 * rng.standard_normal(y.shape).astype(np.float32)
    return x, y


def window(losses, k=5):
    """Mean loss over the first and the last k steps (k shrinks for short runs)."""
    k = max(1, min(k, len(losses) // 4))
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


# --------------------------------------------------------------------------- PyTorch
def torch_worker(rank, world, port, cfg, args, threads):
    """Trains on this rank's B/world slots of every batch; rank 0 returns the result."""
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ddp = world > 1
    if ddp:
        import torch.distributed as dist
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=rank, world_size=world)

    class Net(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.lstm = nn.LSTM(F, hidden, num_layers=2, batch_first=True)
            self.drop = nn.Dropout(DROPOUT)
            self.head = nn.Linear(hidden, F)

        def forward(self, x, state):
            out, state = self.lstm(x, state)
            return self.head(self.drop(out)), state

    batch, per = cfg["batch"], cfg["batch"] // world
    model = Net(cfg["hidden"])
    if ddp:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=LR, eps=EPS)
    loss_fn = nn.MSELoss()
    xs, ys = (torch.from_numpy(a) for a in make_data(args.sequences))
    batches = args.sequences // batch
    lo, hi = rank * per, (rank + 1) * per
    total = args.warmup_steps + args.steps
    losses, state, t0 = [], None, None
    model.train()
    for i in range(total):
        if i == args.warmup_steps:
            if ddp:
                dist.barrier()
            t0 = time.perf_counter()
        b = i % batches
        if b == 0:
            state = None                               # zero state at epoch start
        xb = xs[b * batch + lo:b * batch + hi]
        yb = ys[b * batch + lo:b * batch + hi]
        out, state = model(xb, state)
        loss = loss_fn(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state = tuple(s.detach() for s in state)       # carry (h, c) to the next batch
        losses.append(loss.item())
    if ddp:
        dist.barrier()
    seconds = time.perf_counter() - t0
    if ddp:                                            # whole-batch loss = mean of halves
        hist = torch.tensor(losses, dtype=torch.float64)
        dist.all_reduce(hist)
        losses = (hist / world).tolist()
        dist.destroy_process_group()
    if rank == 0:
        return {"seconds": seconds, "losses": losses,
                "threads": torch.get_num_threads()}
    return None


# --------------------------------------------------------------------------- Keras
@contextlib.contextmanager
def quiet_stderr():
    """Silences the C++ start-up chatter that TensorFlow writes to fd 2 on import."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def keras_worker(rank, world, port, cfg, args, threads):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")      # a CPU benchmark
    with quiet_stderr():
        import tensorflow as tf
        import keras
    from keras import layers
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(0)
    batch, hidden = cfg["batch"], cfg["hidden"]
    model = keras.Sequential([
        keras.Input(batch_shape=(batch, T, F)),
        layers.LSTM(hidden, return_sequences=True, stateful=True),
        layers.LSTM(hidden, return_sequences=True, stateful=True),
        layers.Dropout(DROPOUT),
        layers.TimeDistributed(layers.Dense(F)),
    ])
    model.compile(loss="mse", optimizer=keras.optimizers.Adam(LR, epsilon=EPS))
    total = args.warmup_steps + args.steps

    class Probe(keras.callbacks.Callback):
        """Resets the LSTM state each epoch, times the steps, recovers per-step loss."""
        def __init__(self):
            super().__init__()
            self.step, self.mean, self.losses, self.t0, self.t1 = 0, 0.0, [], None, None

        def on_epoch_begin(self, epoch, logs=None):
            for layer in self.model.layers:
                if getattr(layer, "stateful", False):
                    layer.reset_states()
            self.mean = 0.0

        def on_train_batch_begin(self, batch_index, logs=None):
            if self.step == args.warmup_steps:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch_index, logs=None):
            mean = float(logs["loss"])          # running mean over the epoch so far
            self.losses.append((batch_index + 1) * mean - batch_index * self.mean)
            self.mean = mean
            self.step += 1
            if self.step == total:
                self.t1 = time.perf_counter()
                self.model.stop_training = True

    x, y = make_data(args.sequences)
    probe = Probe()
    epochs = math.ceil(total / (args.sequences // batch))
    model.fit(x, y, batch_size=batch, shuffle=False, epochs=epochs, verbose=0,
              callbacks=[probe])
    if probe.t1 is None:
        raise RuntimeError(f"fit ran {probe.step} of {total} steps")
    return {"seconds": probe.t1 - probe.t0, "losses": probe.losses[:total],
            "threads": threads, "jit_compile": bool(getattr(model, "jit_compile", False))}


# --------------------------------------------------------------------------- harness
def child(target, rank, world, port, cfg, args, threads, out):
    try:
        result = target(rank, world, port, cfg, args, threads)
        if rank == 0:
            out.put(result)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        traceback.print_exc()
        out.put({"error": f"rank {rank}: {type(exc).__name__}: {exc}"})


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_isolated(target, world, cfg, args, threads):
    """Runs target in `world` fresh spawned processes; returns rank 0's result."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port() if world > 1 else 0
    procs = [ctx.Process(target=child, args=(target, r, world, port, cfg, args, threads, out))
             for r in range(world)]
    for p in procs:
        p.start()
    result = None
    while result is None:
        # A rank that died without reporting (or all ranks done) ends the wait.
        done = any(p.exitcode not in (None, 0) for p in procs) or \
            all(p.exitcode is not None for p in procs)
        try:
            result = out.get(timeout=2.0 if done else 1.0)
        except queue.Empty:
            if done:
                result = {"error": f"workers exited with {[p.exitcode for p in procs]}"}
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
            p.join()
    return result


def missing(engine):
    needs = {"torch": ["torch"], "ddp": ["torch"], "keras": ["tensorflow", "keras"]}[engine]
    for mod in needs + ["numpy"]:
        if importlib.util.find_spec(mod) is None:
            return f"{mod} not installed"
    return None


def measure(engine, name, args):
    cfg = CONFIGS[name]
    steps = args.steps if args.steps is not None else cfg["steps"]
    world = 2 if engine == "ddp" else 1
    threads = args.threads if args.threads is not None else (1 if engine == "ddp" else 2)
    row = {"engine": ENGINE_NAMES[engine], "config": name, "batch": cfg["batch"],
           "hidden": cfg["hidden"]}
    reason = missing(engine)
    if reason:
        return dict(row, skipped=reason)
    run_args = argparse.Namespace(sequences=args.sequences - args.sequences % cfg["batch"],
                                  warmup_steps=args.warmup_steps, steps=steps)
    if run_args.sequences < cfg["batch"]:
        return dict(row, error=f"--sequences must be at least {cfg['batch']}")
    target = keras_worker if engine == "keras" else torch_worker
    res = run_isolated(target, world, cfg, run_args, threads)
    if "error" in res:
        return dict(row, error=res["error"])
    first, last = window(res["losses"])
    row.update(processes=world, threads_per_process=res["threads"],
               sequences=run_args.sequences, warmup_steps=args.warmup_steps,
               timed_steps=steps, seconds=round(res["seconds"], 4),
               seq_per_s=round(cfg["batch"] * steps / res["seconds"], 2),
               steps_per_s=round(steps / res["seconds"], 2),
               loss_first=round(first, 5), loss_last=round(last, 5))
    if "jit_compile" in res:
        row["jit_compile"] = res["jit_compile"]
    print(f"  {row['engine']:<14} {name:<6} loss {first:.4f} -> {last:.4f}"
          f"{'' if last < first else '  (NOT DECREASING)'}", file=sys.stderr, flush=True)
    return row


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info():
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "torch": version("torch"),
            "tensorflow": version("tensorflow"), "keras": version("keras"),
            "numpy": version("numpy")}


def table(results):
    lines = [f"{'engine':<14} {'config':<6} {'B':>3} {'H':>3} {'seq/s':>10} {'steps/s':>9}"
             f" {'loss first -> last':>20}"]
    for r in results:
        head = f"{r['engine']:<14} {r['config']:<6} {r['batch']:>3} {r['hidden']:>3}"
        if "seq_per_s" in r:
            lines.append(f"{head} {r['seq_per_s']:>10.1f} {r['steps_per_s']:>9.2f}"
                         f" {r['loss_first']:>9.4f} -> {r['loss_last']:.4f}")
        else:
            lines.append(f"{head}  {'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["seed", "large", "both"], default="both")
    p.add_argument("--sequences", type=int, default=2000,
                   help="sequences in the data set (rounded down to a multiple of B)")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per measurement (default: 500 seed, 50 large)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per process (default: 2 single-process, 1 per DDP rank)")
    p.add_argument("--only", action="append", choices=ENGINES,
                   help="run only this engine (repeatable)")
    p.add_argument("--json-out", help="also write the JSON to this file")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    if args.warmup_steps < 0:
        p.error("--warmup-steps must not be negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    configs = ["seed", "large"] if args.config == "both" else [args.config]
    engines = [e for e in ENGINES if not args.only or e in args.only]
    results = []
    for name in configs:
        for engine in engines:
            results.append(measure(engine, name, args))
    report = {"machine": machine_info(),
              "settings": {"T": T, "F": F, "lr": LR, "eps": EPS, "dropout": DROPOUT,
                           "warmup_steps": args.warmup_steps},
              "results": results}
    print(table(results), file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
