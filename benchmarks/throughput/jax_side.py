"""The JAX side: the project's own training step for one config, compiled ahead of time for every
padded shape, fed by the project's prefetcher."""

from __future__ import annotations

import time

from benchmarks.throughput.settings import BATCH_SIZE


def input_pipeline_rate(batcher, place, num_batches: int) -> float:
    """Batches/s that one host thread prepares (pack + pad + device placement)."""
    t = time.perf_counter()
    for k in range(num_batches):
        place(batcher.batch(k))
    return num_batches / (time.perf_counter() - t)


class JaxBench:
    """The project's training step for one config, compiled ahead of time for every shape."""

    def __init__(self, cfg, molecules, indices, layout: str = "pairs"):
        import jax
        from georecon_jax.graphs.batching import GraphBatcher
        from georecon_jax.training.state import make_mesh, param_count, shard_batch
        from georecon_jax.tasks.pretrain import fresh_train_step, micro_batches

        self.jax = jax
        self.devices = cfg.num_devices
        self.micro_batches = micro_batches(cfg, self.devices)
        self.batcher = GraphBatcher(
            molecules,
            indices,
            BATCH_SIZE,
            num_devices=self.devices * self.micro_batches,
            shuffle=False,
            neighbor_list=cfg.graph.neighbor_list,
            cutoff=cfg.model.encoder.cutoff,
            skin=cfg.graph.skin,
            num_buckets=cfg.graph.num_buckets,
            seed=cfg.seed,
            layout=layout,
        )
        self.layout = layout
        self.mesh = make_mesh(self.devices)
        self.place = lambda b: shard_batch(b, self.mesh)
        self.trace_counter = []
        _, self.state, self.step_fn = fresh_train_step(
            cfg, self.batcher, self.mesh, jax.random.PRNGKey(cfg.seed), trace_counter=self.trace_counter
        )
        self.num_params = param_count(self.state.params)
        self.compiled, self.flops, self.bytes = {}, {}, {}
        self.compile_seconds = 0.0

    @staticmethod
    def shape_key(batch):
        return (batch.nodes.positions.shape, batch.senders.shape)

    def compile_all(self, num_batches: int):
        for k in range(num_batches):
            batch = self.place(self.batcher.batch(k))
            key = self.shape_key(batch)
            if key in self.compiled:
                continue
            t = time.perf_counter()
            compiled = self.step_fn.jitted.lower(self.state, batch, self.step_fn.base_key).compile()
            self.compile_seconds += time.perf_counter() - t
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            self.compiled[key] = compiled
            self.flops[key] = float(cost.get("flops", float("nan")))
            self.bytes[key] = float(cost.get("bytes accessed", float("nan")))

    def step(self, batch):
        self.state, metrics = self.compiled[self.shape_key(batch)](self.state, batch, self.step_fn.base_key)
        return metrics

    def run(self, batch_ids):
        """Times each iteration: wait for the prefetched batch, step, block on the result."""
        from georecon_jax.training.prefetch import Prefetcher

        n = self.batcher.steps_per_epoch
        ids = list(batch_ids)
        pre = Prefetcher(lambda i: self.place(self.batcher.batch(ids[i] % n)), 0, len(ids))
        times, flops, loss = [], [], None
        try:
            for _ in ids:
                t = time.perf_counter()
                _, batch = pre.get()
                metrics = self.step(batch)
                loss = metrics["loss"]
                self.jax.block_until_ready(loss)
                times.append(time.perf_counter() - t)
                flops.append(self.flops[self.shape_key(batch)])
        finally:
            pre.close()
        return times, flops, float(loss)
