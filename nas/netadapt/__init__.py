"""NetAdapt as MobileNetV3 used it: shrink a trained network to a latency target, step by step.

Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile Applications"
(ECCV 2018), and MobileNetV3 (Howard et al., 2019, Sec. 4.2):

1. Start from a trained seed; ``L0`` is its lookup-table latency (:mod:`nas.cost.lut`).
2. Each step generates *proposals*, each cutting the latency by at least
   ``delta = delta_fraction x L0`` (the paper: 0.01 L0). MobileNetV3 uses two kinds:

   * ``expansion``: shrink one block's expansion layer;
   * ``bottleneck``: shrink the output width shared by a residual group (a stage's first
     block, or the stem, plus every following stride-1 block with ``in == out``), so every
     residual connection stays legal (:func:`nas.models.channel_groups.residual_groups`).

   Each proposal takes the *largest* channel count (a multiple of ``divisor``) that meets
   its cut, as NetAdapt picks the largest filter count meeting a step's budget from its
   per-layer lookup tables (Sec. 3.2.1). Keys the table lacks are measured on demand
   (:class:`nas.netadapt.latency.TableLatency` with ``measure_missing``) into the run's
   copy of the table (the latency policy, :mod:`nas.cost.policy`).
3. Each proposal inherits the previous weights, keeping the filters with the largest L2
   norm (:mod:`nas.models.prune`), is fine-tuned for ``T`` steps ("short-term", the paper's
   T = 10000) and evaluated on a held-out split.
4. The pick: the largest ``dAcc / |dLatency|`` (MobileNetV3's rule, ``rule="paper"``), or
   the highest accuracy (the original NetAdapt's, ``rule="netadapt"``). Both changes are
   taken against the current network: its table latency and its holdout score (the picked
   proposal's after its short-term fine-tune; at step 1, the start's).
5. Repeat until the target latency, then fine-tune the result for longer ("long-term";
   MobileNetV3 trains the final network from scratch: ``long_term_init="scratch"``).

Choices that are ours, not the papers':

* Channel counts that would make a block's expansion equal its input width are skipped:
  the builder then drops the 1x1 expand conv (paper Table 1, row 1), and no inherited
  weight maps onto the missing layer. Likewise counts that would create a residual
  (a stride-1 block's ``in == out``) are skipped, so the network's topology never changes.
  A block *without* an expand conv (``expansion == in``) has its depthwise channels tied
  to its input: it gets no expansion proposal, and shrinking its input shrinks them too.
* ``max_proposals`` (None = all) evaluates only the k proposals with the best latency
  saving per fraction of channels removed (``preselect="saving_per_channel"``) or the best
  raw saving (``"saving"``), to bound the cost of a step on small machines.
* Before a proposal (or the start) is scored, BatchNorm statistics are recalibrated on a
  few training batches (``TrainConfig.bn_recalibration_batches``, :func:`nas.models.bn.recalibrate_bn`):
  MobileNetV3's BN momentum of 0.01 would otherwise keep the pre-pruning statistics
  through a short fine-tune.
* ``selection="holdout"``: proposals are trained on the training split minus a carved,
  class-stratified holdout (``DataConfig.carve_val``) and scored on that holdout, so the
  validation split stays unseen until the final report (NetAdapt, Sec. 3.1, uses a
  separate holdout set for the same reason). Synthetic data has no carve: there the
  validation split serves both.
* A step's short-term runs all use training seed ``seed + step`` (same batches for every
  proposal of a step, fresh batches for the next step).

Everything is checkpointed per step (spec, weights, history, and each evaluated proposal of
an unfinished step), so an interrupted refinement resumes at the last finished proposal
and produces the history an uninterrupted run would.
"""
