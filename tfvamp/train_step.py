"""The compiled training step: `TrainStep`, a part of `tfvamp.training.Trainer`.

`strategy.run` inside a `tf.function`: each replica takes its rows of the global batch (or, for
streamed sources on several replicas, its own batch) and sums its losses over the *global* batch
size; the optimizer receives the replicas' gradients summed. Every replica draws the noise of the
whole global batch from a stateless seed (`noise_seed` folded with the optimizer step) and keeps
its own rows, so a mirrored run computes exactly what one device would. Also the seeded
evaluation step (beta = 1) that validation runs.
"""
import tensorflow as tf

from tfvamp import noise


class TrainStep:
    """The train and evaluation steps.

    A part of `Trainer`: it reads `model`, `optimizer`, `beta`, `noise_seed`, `strategy`,
    `num_replicas`, `global_batch`, `local_batch` and `jit_compile`.
    """

    def _build_steps(self):
        """The traced functions: the gradients (XLA-compiled with `jit_compile`), the distributed
        train steps and the evaluation step."""
        grads = self._replica_grads
        self._grads_fn = tf.function(grads, jit_compile=True) if self.jit_compile else grads
        self._train_step = tf.function(self._distributed_step)
        self._train_step_per_replica = tf.function(self._distributed_step_per_replica)
        self._eval_step = tf.function(self._eval_batch, reduce_retracing=True)

    def _replica_grads(self, x, seed, replica_id):
        """Forward and backward pass on this replica's rows: (gradients, [3] sums)."""
        noise_fn = noise.replica_noise_fn(seed, replica_id, self.num_replicas)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            terms = self.model.loss_terms(x, beta=self.beta, training=True, noise_fn=noise_fn)
            # Per-replica sum over the *global* batch size: the replicas' gradients add up to
            # the gradient of the global mean.
            loss = tf.reduce_sum(terms["loss"]) / float(self.global_batch)
        grads = tape.gradient(loss, variables)
        sums = tf.stack([tf.reduce_sum(terms[k]) for k in ("loss", "reconstruction", "kl")])
        return grads, sums

    def _local_grads(self, x_global):
        """This replica's rows of the global batch -> (gradients, sums), noise from the step's seed."""
        replica_id = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
        size = tf.concat([[self.local_batch], tf.shape(x_global)[1:]], 0)
        x = tf.slice(x_global, tf.concat([[replica_id * self.local_batch], tf.zeros([3], tf.int32)], 0), size)
        seed = tf.random.experimental.stateless_fold_in(self.noise_seed, self.optimizer.iterations)
        return self._grads_fn(x, seed, replica_id)

    def _replica_step_own_rows(self, x):
        """A step on this replica's own batch (streamed sources: each replica's input pipeline
        gives it its rows), noise from the step's seed as in `_local_grads`."""
        replica_id = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
        seed = tf.random.experimental.stateless_fold_in(self.noise_seed, self.optimizer.iterations)
        grads, sums = self._grads_fn(x, seed, replica_id)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return sums

    def _distributed_step_per_replica(self, x_per_replica):
        per_replica = self.strategy.run(self._replica_step_own_rows, (x_per_replica,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _replica_step(self, x_global):
        grads, sums = self._local_grads(x_global)
        # Keras sums the gradients over replicas, then AdamNormGrad normalises and steps.
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return sums

    def global_gradients(self, x_global):
        """The gradient of the next step's loss (mean over the global batch), summed over replicas
        as the optimizer receives it; nothing is updated. For checking distributed runs."""
        def fn(x):
            grads, _ = self._local_grads(x)
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)

        run = tf.function(lambda x: self.strategy.experimental_local_results(self.strategy.run(fn, (x,)))[0])
        return [g.numpy() for g in run(tf.convert_to_tensor(x_global, tf.float32))]

    def _distributed_step(self, x_global):
        """One step on a global batch `[B, H, W, C]`: every replica takes its rows."""
        per_replica = self.strategy.run(self._replica_step, (x_global,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def train_step(self, x_global):
        """Runs one step; returns the summed [loss, reconstruction, kl] over the global batch.
        `x_global`: the global batch, or (streamed sources on several replicas) a per-replica
        value of each replica's rows."""
        if isinstance(x_global, tf.distribute.DistributedValues):
            return self._train_step_per_replica(x_global)
        x_global = tf.convert_to_tensor(x_global, tf.float32)
        if x_global.shape[0] != self.global_batch:
            raise ValueError(f"train_step takes global batches of {self.global_batch}, got {x_global.shape[0]}.")
        return self._train_step(x_global)

    def train_step_graph(self, x_global):
        """The traced train step for a batch like `x_global` (a concrete function: FLOP counting)."""
        return self._train_step.get_concrete_function(tf.convert_to_tensor(x_global, tf.float32))

    def _eval_batch(self, x, seed):
        """Sums of the beta = 1 terms over a batch, with seeded noise."""
        noise_fn = noise.replica_noise_fn(seed, 0, 1)
        terms = self.model.loss_terms(x, beta=1.0, training=False, noise_fn=noise_fn)
        return tf.stack([tf.reduce_sum(tf.cast(terms[k], tf.float64)) for k in ("loss", "reconstruction", "kl")])
